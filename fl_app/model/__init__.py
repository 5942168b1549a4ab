"""The hospital's model: a frozen backbone, one head per task, and a PEFT LoRA adapter."""

from fl_app.model.adapter import (
    arrayrecord_to_state,
    record_dict_bytes,
    save_adapter,
    state_to_arrayrecord,
)
from fl_app.model.backbone import build_backbone, feature_dim
from fl_app.model.classifier import MedForgeClassifier
from fl_app.model.lora import (
    HospitalModel,
    lora_config,
    resolve_lora_targets,
)

__all__ = [
    "HospitalModel",
    "MedForgeClassifier",
    "record_dict_bytes",
    "arrayrecord_to_state",
    "build_backbone",
    "feature_dim",
    "lora_config",
    "resolve_lora_targets",
    "save_adapter",
    "state_to_arrayrecord",
]

"""The server's expectation of a hospital's adapter, read off the classifier every hospital builds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from fl_app.adapter_keys import LORA_A_SUFFIX, head_state, lora_state
from fl_app.adapter_layout import AdapterLayout
from fl_app.model.lora import hospital_model


def adapter_layout(
    model_cfg: Mapping[str, Any], lora_cfg: Mapping[str, Any], task_outputs: Mapping[str, int]
) -> AdapterLayout:
    """Keys, rank-free shapes, dtype, pretrained weight norms and initial head norms of the experiment's adapter.

    Uses the process's cached HospitalModel (the backbone is built once per process, as at a hospital).
    """
    model = hospital_model(model_cfg, task_outputs)
    name = model.use_adapter(lora_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # initial heads drawn as a hospital draws them, without touching the global RNG
        model.reset_adapter(name, seed=0)
    state = get_peft_model_state_dict(model.peft, adapter_name=name)
    base_norms = {}
    for path, module in model.peft.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            key = f"{path}{LORA_A_SUFFIX}"
            if key in state:
                base_norms[path] = float(module.get_base_layer().weight.detach().double().norm())
    return AdapterLayout.from_states(
        lora_state(state),
        {task: head_state(state, [task]) for task in task_outputs},
        base_norms,
    )

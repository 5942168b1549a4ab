"""Conv2d LoRA adapters (EfficientNet's 1x1 convolutions; a 3x3 one for generality) merge exactly.

PEFT's Conv2d LoRA: A is a convolution (r, d_in, kh, kw), B a 1x1 convolution (d_out, r, 1, 1),
ΔW = B @ A over the flattened kernel. Each registered method must give, on conv adapters, the ΔW it
gives on the same factors as Linear adapters, in a state PEFT loads (kernel shapes restored) and
whose `get_delta_weight` (PEFT's own conv formula) is that ΔW.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from fl_app.adapter_layout import AdapterLayout
from strategies.merging import MERGE_METHODS, Submission, merge_adapters, split_lora_modules, task_arithmetic
from strategies.merging.adapters import flat_lora_a, flat_lora_b
from strategies.merging.validation import screen_adapters
from tests.merging.factories import state_statistics

TOL = 1e-5
MODULES = ("conv_pw", "conv_k3")


class TinyConvNet(nn.Module):
    """A 1x1 conv 6->10 and a 3x3 conv 10->4, plus a task head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(6, 10, 1, bias=False)
        self.conv_k3 = nn.Conv2d(10, 4, 3, padding=1, bias=False)
        self.heads = nn.ModuleDict({"task": nn.Linear(4, 2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["task"](self.conv_k3(self.conv_pw(x)).mean(dim=(2, 3)))


def conv_peft_model(r: int, alpha: int, seed: int):
    torch.manual_seed(0)
    base = TinyConvNet()
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(MODULES), modules_to_save=["heads.task"], init_lora_weights=False
    )
    return get_peft_model(base, config)


def hospital_states(n: int = 3, r: int = 4, alpha: int = 8):
    return [get_peft_model_state_dict(conv_peft_model(r, alpha, seed)) for seed in range(n)]


def as_linear(state):
    """The same adapter with every factor flattened to a matrix (what a Linear LoRA would hold)."""
    return {
        k: flat_lora_a(v) if k.endswith("lora_A.weight") else flat_lora_b(v) if k.endswith("lora_B.weight") else v
        for k, v in state.items()
    }


def peft_delta(state, r: int, module: str) -> torch.Tensor:
    """ΔW (flattened to d_out x d_in·kh·kw) as PEFT computes it after loading `state` at rank r, scale 1."""
    model = conv_peft_model(r, r, seed=99)
    result = set_peft_model_state_dict(model, state)
    assert not result.unexpected_keys
    layer = model.base_model.model.get_submodule(module)
    return layer.get_delta_weight("default").reshape(layer.base_layer.weight.shape[0], -1).double()


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.linalg.norm(x.double() - y.double()) / torch.linalg.norm(y.double())).item()


def test_split_flattens_conv_factors_like_peft():
    # Prepare
    state = hospital_states(1)[0]
    # Execute
    modules = split_lora_modules(state, 2.0)
    # Assert: the 2-D product is PEFT's own ΔW of each conv
    for module in MODULES:
        factors = modules[f"base_model.model.{module}"]
        assert factors.A.dim() == 2 and factors.B.dim() == 2
        expected = peft_delta(state, 4, module) * 2.0  # alpha/r = 2 in the hospitals, 1 in peft_delta's model
        assert rel(factors.delta(), expected) < TOL


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
def test_every_method_merges_conv_adapters_as_it_merges_their_matrices(method):
    # Prepare
    states = hospital_states()
    weights, scales = [0.5, 0.3, 0.2], [2.0] * 3
    kind = MERGE_METHODS[method].stats  # data-aware: the same statistics, Fishers in each form's shapes
    stats = [state_statistics(s, kind, i) for i, s in enumerate(states)] if kind else None
    linears = [as_linear(s) for s in states]
    linear_stats = stats and [
        {k: t.reshape(lin[k[: -len(".fisher")]].shape) if k.endswith(".fisher") else t for k, t in st.items()}
        for st, lin in zip(stats, linears)
    ]
    # Execute
    conv = merge_adapters(states, scales, weights, ["task"] * 3, method=method, stats=stats)
    linear = merge_adapters(linears, scales, weights, ["task"] * 3, method=method, stats=linear_stats)
    # Assert: kernel shapes restored, same ΔW as the matrix merge, and PEFT computes that ΔW after loading
    for module in MODULES:
        key = f"base_model.model.{module}"
        assert conv.state[key + ".lora_A.weight"].dim() == 4
        assert conv.state[key + ".lora_B.weight"].shape[2:] == (1, 1)
        conv_delta = split_lora_modules(conv.state, 1.0)[key].delta()
        linear_delta = split_lora_modules(linear.state, 1.0)[key].delta()
        if linear_delta.abs().max() == 0:  # model_stock of near-orthogonal updates: t = 0, nothing merged
            assert conv_delta.abs().max() == 0
            continue
        assert rel(conv_delta, linear_delta) < TOL
        assert rel(peft_delta(conv.state, conv.rank, module), conv_delta) < TOL


def test_task_arithmetic_on_conv_adapters_is_the_exact_weighted_sum():
    # Prepare
    states = hospital_states()
    weights = [1.0, 0.5, 0.25]
    # Execute
    merged = merge_adapters(states, [2.0] * 3, weights, ["task"] * 3, method="task_arithmetic")
    # Assert
    for module in MODULES:
        explicit = sum(w * 2.0 * peft_delta(s, 4, module) for s, w in zip(states, weights))
        assert rel(peft_delta(merged.state, merged.rank, module), explicit) < TOL
    assert merged.exact


def test_screen_measures_conv_adapter_norms():
    # Prepare: hospital 2 sends a 50x adapter; the layout is the fresh adapter's own
    states = hospital_states()
    states[2] = {k: v * 50 if k.endswith("lora_B.weight") else v for k, v in states[2].items()}
    lora = {k: v for k, v in states[0].items() if "lora_" in k}
    heads = {"task": {k: v for k, v in states[0].items() if "heads" in k}}
    modules = {k[: -len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")}
    layout = AdapterLayout.from_states(lora, heads, {m: 1e6 for m in modules})
    # Execute
    result = screen_adapters([Submission(i, "task", s, 4, 8.0) for i, s in enumerate(states)], layout)
    # Assert
    assert result.accepted == [0, 1]
    assert {r.hospital_id for r in result.rejections} == {2}


def test_factors_merge_matches_peft_cat_on_conv():
    """PEFT's `cat` on Conv2d LoRA (its own conv layout) gives the same ΔW as task arithmetic here."""
    # Prepare
    torch.manual_seed(0)
    model = None
    for i in range(2):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=list(MODULES), init_lora_weights=False)
        model = get_peft_model(TinyConvNet(), config, adapter_name="h0") if model is None else model
        if i:
            model.add_adapter(f"h{i}", config)
    model.add_weighted_adapter(["h0", "h1"], [0.7, 0.3], "cat", combination_type="cat")
    states = [get_peft_model_state_dict(model, adapter_name=f"h{i}") for i in range(2)]
    # Execute
    ours = merge_adapters(states, [2.0, 2.0], [0.7, 0.3], ["task", "task"], method="task_arithmetic")
    # Assert
    for module in MODULES:
        layer = model.base_model.model.get_submodule(module)
        peft = layer.get_delta_weight("cat").reshape(layer.base_layer.weight.shape[0], -1)
        mine = split_lora_modules(ours.state, 1.0)[f"base_model.model.{module}"].delta()
        assert rel(mine, peft) < TOL
    assert task_arithmetic  # the registered default method is the one compared


def test_medforge_fusion_of_conv_adapters_is_exact_and_loads_with_peft():
    from strategies.medforge.fusion import fuse

    # Prepare
    states = hospital_states(2)
    adapters = [split_lora_modules(s, 2.0) for s in states]
    coefficients = [{m: c for m in adapters[0]} for c in (0.8, -0.3)]
    # Execute
    state, rank = fuse(adapters, coefficients, "delta", like=states[0])
    state |= {k: v for k, v in states[0].items() if "heads." in k}  # fuse returns LoRA only; PEFT loads heads too
    # Assert
    for module in MODULES:
        explicit = sum(c * 2.0 * peft_delta(s, 4, module) for s, c in zip(states, (0.8, -0.3)))
        assert rel(peft_delta(state, rank, module), explicit) < TOL

"""Merging whole hospital adapters: real PEFT state dicts in, a loadable PEFT adapter out."""

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from strategies.merging.adapters import (
    head_task,
    lora_modules_to_state,
    merge_adapters,
    split_heads,
    split_lora_modules,
)
from strategies.merging.lowrank import LoraFactors, task_arithmetic
from strategies.merging.weights import merge_weights

TASKS = ("breastmnist", "pneumonia", "dermamnist")
TARGETS = ("q_proj", "v_proj")
Q, V = "base_model.model.q_proj", "base_model.model.v_proj"


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sizes = {"breastmnist": 2, "pneumonia": 3, "dermamnist": 7}
        self.heads = nn.ModuleDict({task: nn.Linear(6, n) for task, n in sizes.items()})


class TinyModel(nn.Module):
    """q_proj 16->16 (rank cap 16) and v_proj 16->6 (rank cap 6): merged ranks differ per module."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 6)
        self.heads = Heads()

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads.heads[task](self.v_proj(self.q_proj(x)))


def peft_model(r: int, lora_alpha: int, lora_seed: int = 0, targets=TARGETS):
    torch.manual_seed(0)  # every hospital starts from the same base model
    base = TinyModel()
    torch.manual_seed(lora_seed)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, target_modules=list(targets), modules_to_save=list(TASKS), init_lora_weights=False
    )
    return get_peft_model(base, config)


def hospital_state(seed: int, targets=TARGETS) -> dict[str, torch.Tensor]:
    """A hospital's reply: r=4, lora_alpha=8 (scale 2), LoRA and heads that differ per seed."""
    state = get_peft_model_state_dict(peft_model(r=4, lora_alpha=8, lora_seed=seed, targets=targets))
    g = torch.Generator().manual_seed(100 + seed)
    return {k: v + torch.randn(v.shape, generator=g) if "heads." in k else v for k, v in state.items()}


def effective_delta(model, name: str) -> torch.Tensor:
    layer = getattr(model.base_model.model, name)
    return layer.scaling["default"] * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)


def explicit_delta(states, weights, module: str, scales=(2.0, 2.0, 2.0)) -> torch.Tensor:
    """Σ w_i s_i B_i A_i, formed naively."""
    return sum(
        w * s * (state[f"{module}.lora_B.weight"].double() @ state[f"{module}.lora_A.weight"].double())
        for state, w, s in zip(states, weights, scales)
    )


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.linalg.norm(x.double() - y.double()) / torch.linalg.norm(y.double())).item()


def head_key(task: str, param: str) -> str:
    return f"base_model.model.heads.heads.{task}.{param}"


@pytest.fixture(scope="module")
def states() -> list[dict[str, torch.Tensor]]:
    return [hospital_state(seed) for seed in (1, 2, 3)]


# head_task and key splitting


@pytest.mark.parametrize(
    ("key", "task"),
    [
        ("base_model.model.heads.heads.breastmnist.weight", "breastmnist"),
        ("base_model.model.heads.heads.breastmnist.bias", "breastmnist"),
        ("heads.pneumonia.weight", "pneumonia"),
        ("base_model.model.heads.breastmnist.weight", "breastmnist"),  # fl_app's MedForgeClassifier layout
        ("model.heads.heads.derma.0.weight", "derma"),
        ("model.heads.heads.weight", "heads"),
    ],
)
def test_head_task(key, task):
    assert head_task(key) == task


@pytest.mark.parametrize("key", ["base_model.model.classifier.weight", "myheads.task.weight", "model.heads.weight"])
def test_head_task_rejects_keys_without_heads_segment(key):
    with pytest.raises(ValueError, match="neither a LoRA key"):
        head_task(key)


def test_peft_state_dict_key_format(states):
    # PEFT strips the adapter name and the modules_to_save wrapper from the keys
    assert sorted(states[0]) == sorted(
        [f"{m}.lora_{x}.weight" for m in (Q, V) for x in "AB"]
        + [head_key(t, p) for t in TASKS for p in ("weight", "bias")]
    )


def test_split_lora_modules_round_trips(states):
    # Prepare
    state = states[0]

    # Execute
    modules = split_lora_modules(state, 2.0)
    back = lora_modules_to_state(modules)

    # Assert
    assert set(modules) == {Q, V}
    assert modules[Q].rank == 4 and modules[Q].scale == 2.0 and (modules[V].d_out, modules[V].d_in) == (6, 16)
    assert back.keys() == {k for k in state if ".lora_" in k}
    assert all(torch.equal(back[k], state[k]) for k in back)
    assert set(split_heads(state)) == set(TASKS)


def test_split_lora_modules_per_module_scales(states):
    modules = split_lora_modules(states[0], {Q: 2.0, V: 0.5})
    assert (modules[Q].scale, modules[V].scale) == (2.0, 0.5)
    with pytest.raises(ValueError, match="no scale given for LoRA module 'base_model.model.v_proj'"):
        split_lora_modules(states[0], {Q: 2.0})


@pytest.mark.parametrize("drop", ["lora_B", "lora_A"])
def test_split_lora_modules_rejects_half_module(states, drop):
    state = {k: v for k, v in states[0].items() if k != f"{Q}.{drop}.weight"}
    with pytest.raises(ValueError, match=f"'{Q}' has .* but no {Q}.{drop}.weight"):
        split_lora_modules(state, 2.0)


# merge_adapters on real PEFT adapters


def test_lossless_merge_loads_into_peft_with_exact_delta(states):
    # Prepare
    weights = merge_weights([10, 20, 30], "num_examples")

    # Execute
    merged = merge_adapters(states, [2.0] * 3, weights, tasks=["breastmnist", "pneumonia", "breastmnist"])
    model = peft_model(r=merged.rank, lora_alpha=merged.lora_alpha, lora_seed=99)
    loaded = set_peft_model_state_dict(model, merged.state)

    # Assert
    assert merged.rank == merged.lora_alpha == 12  # q_proj: min(3*4, 16, 16); v_proj padded from 6
    assert merged.exact and merged.relative_error == 0.0
    assert loaded.unexpected_keys == []
    assert model.base_model.model.q_proj.scaling["default"] == 1.0
    for name, module in (("q_proj", Q), ("v_proj", V)):
        assert rel(effective_delta(model, name), explicit_delta(states, weights, module)) < 1e-5
    assert torch.count_nonzero(merged.state[f"{V}.lora_A.weight"][6:]) == 0  # zero padding rows


def test_truncated_merge_reports_the_error_it_makes(states):
    # Prepare
    weights = [0.5, 0.25, 0.25]

    # Execute
    merged = merge_adapters(states, [2.0] * 3, weights, tasks=["breastmnist"] * 3, rank=3)
    model = peft_model(r=merged.rank, lora_alpha=merged.lora_alpha)
    set_peft_model_state_dict(model, merged.state)

    # Assert
    assert merged.rank == merged.lora_alpha == 3 and not merged.exact
    errors = {
        module: rel(effective_delta(model, name), explicit_delta(states, weights, module))
        for name, module in (("q_proj", Q), ("v_proj", V))
    }
    assert merged.module_errors == pytest.approx(errors, rel=1e-4)
    assert merged.relative_error == pytest.approx(max(errors.values()), rel=1e-4)


def test_one_hospital_with_weight_one_merges_to_its_own_adapter(states):
    # Execute
    merged = merge_adapters(states[:1], [2.0], [1.0], tasks=["pneumonia"])
    model = peft_model(r=merged.rank, lora_alpha=merged.lora_alpha)
    set_peft_model_state_dict(model, merged.state)

    # Assert
    assert merged.rank == 4
    for name, module in (("q_proj", Q), ("v_proj", V)):
        assert rel(effective_delta(model, name), explicit_delta(states[:1], [1.0], module)) < 1e-5
    assert all(torch.equal(merged.state[k], states[0][k]) for k in merged.state if "heads." in k)


def test_merged_model_forward_matches_explicit_weights(states):
    # Prepare
    weights = [1 / 3] * 3
    merged = merge_adapters(states, [2.0] * 3, weights, tasks=["breastmnist", "pneumonia", "breastmnist"])
    model = peft_model(r=merged.rank, lora_alpha=merged.lora_alpha).eval()
    set_peft_model_state_dict(model, merged.state)
    torch.manual_seed(0)
    base = TinyModel()
    x = torch.randn(5, 16)

    # Execute
    out = model(x, "breastmnist")

    # Assert
    h = x @ (base.q_proj.weight.double() + explicit_delta(states, weights, Q)).float().T + base.q_proj.bias
    h = h @ (base.v_proj.weight.double() + explicit_delta(states, weights, V)).float().T + base.v_proj.bias
    expected = h @ merged.state[head_key("breastmnist", "weight")].T + merged.state[head_key("breastmnist", "bias")]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_heads_merge_per_task_with_renormalised_weights(states):
    # Prepare: hospitals 0 and 2 train breastmnist, hospital 1 pneumonia, nobody dermamnist
    weights = merge_weights([10, 20, 30], "num_examples")

    # Execute
    merged = merge_adapters(states, [2.0] * 3, weights, tasks=["breastmnist", "pneumonia", "breastmnist"])
    model = peft_model(r=merged.rank, lora_alpha=merged.lora_alpha)
    set_peft_model_state_dict(model, merged.state)
    reloaded = get_peft_model_state_dict(model)

    # Assert
    for p in ("weight", "bias"):
        b, pn, d = head_key("breastmnist", p), head_key("pneumonia", p), head_key("dermamnist", p)
        torch.testing.assert_close(merged.state[b], 0.25 * states[0][b] + 0.75 * states[2][b])
        torch.testing.assert_close(merged.state[pn], states[1][pn])
        # a head nobody trained passes through, averaged over every hospital that carries it
        torch.testing.assert_close(merged.state[d], sum(w * s[d] for s, w in zip(states, weights)))
        for k in (b, pn, d):
            torch.testing.assert_close(reloaded[k], merged.state[k])


def test_hospitals_sending_only_their_own_head(states):
    # Prepare: like fl_app's HospitalModel.adapter_state, each hospital sends LoRA + its task's head only
    tasks = ["breastmnist", "pneumonia", "breastmnist"]
    own = [{k: v for k, v in s.items() if ".lora_" in k or f"heads.{t}." in k} for s, t in zip(states, tasks)]

    # Execute
    merged = merge_adapters(own, [2.0] * 3, [0.5, 0.3, 0.2], tasks)

    # Assert
    assert {k for k in merged.state if "heads." in k} == {head_key(t, p) for t in tasks for p in ("weight", "bias")}
    b = head_key("breastmnist", "weight")
    torch.testing.assert_close(merged.state[b], (0.5 * states[0][b] + 0.2 * states[2][b]) / 0.7)


def test_merge_with_registered_method_and_per_module_scales(states):
    # Prepare: hospital 2 ran with a per-module scale for v_proj (alpha_pattern)
    scales = [2.0, 2.0, {Q: 2.0, V: 1.0}]
    weights = [0.2, 0.3, 0.5]

    # Execute
    merged = merge_adapters(states, scales, weights, ["breastmnist"] * 3, scale=0.5, method=task_arithmetic)

    # Assert
    modules = split_lora_modules(merged.state, 1.0)
    assert rel(modules[V].delta(), 0.5 * explicit_delta(states, weights, V, scales=(2.0, 2.0, 1.0))) < 1e-5
    assert rel(modules[Q].delta(), 0.5 * explicit_delta(states, weights, Q)) < 1e-5


# errors


def test_rejects_mismatched_module_sets(states):
    other = hospital_state(seed=4, targets=("q_proj",))
    message = r"hospital 2's LoRA modules differ .* missing \['base_model.model.v_proj'\], extra \[\]"
    with pytest.raises(ValueError, match=message):
        merge_adapters([states[0], states[1], other], [2.0] * 3, [1 / 3] * 3, ["breastmnist"] * 3)


def test_rejects_missing_lora_b(states):
    broken = {k: v for k, v in states[1].items() if k != f"{Q}.lora_B.weight"}
    with pytest.raises(ValueError, match=f"hospital 1: LoRA module '{Q}' has .* but no {Q}.lora_B.weight"):
        merge_adapters([states[0], broken], [2.0] * 2, [0.5] * 2, ["breastmnist"] * 2)


@pytest.mark.parametrize(
    ("n_scales", "n_weights", "n_tasks", "message"),
    [(2, 3, 3, "2 scales for 3"), (3, 1, 3, "1 weights for 3"), (3, 3, 4, "4 tasks for 3")],
)
def test_rejects_length_mismatch(states, n_scales, n_weights, n_tasks, message):
    with pytest.raises(ValueError, match=message):
        merge_adapters(states, [2.0] * n_scales, [0.3] * n_weights, ["breastmnist"] * n_tasks)


def test_rejects_empty_input():
    with pytest.raises(ValueError, match="at least one hospital state"):
        merge_adapters([], [], [], [])


def test_rejects_state_without_lora():
    state = {head_key("breastmnist", "weight"): torch.ones(2, 6)}
    with pytest.raises(ValueError, match="hospital 0's state has no LoRA keys"):
        merge_adapters([state], [1.0], [1.0], ["breastmnist"])


def test_rejects_task_without_head(states):
    message = r"hospital 1 is on task 'chestmnist' but its state holds heads only for \['breastmnist'"
    with pytest.raises(ValueError, match=message):
        merge_adapters(states, [2.0] * 3, [1 / 3] * 3, ["breastmnist", "chestmnist", "breastmnist"])


def test_rejects_unknown_key(states):
    state = dict(states[0]) | {"base_model.model.q_proj.lora_A.default.weight": torch.ones(4, 16)}
    with pytest.raises(ValueError, match="hospital 0: key .* is neither a LoRA key"):
        merge_adapters([state], [2.0], [1.0], ["breastmnist"])


def test_rejects_bad_rank(states):
    with pytest.raises(ValueError, match="rank must be a positive int or None"):
        merge_adapters(states, [2.0] * 3, [1 / 3] * 3, ["breastmnist"] * 3, rank=0)


def test_lora_modules_to_state_keys():
    factors = LoraFactors(A=torch.ones(2, 3), B=torch.ones(4, 2))
    assert list(lora_modules_to_state({"m.layer": factors})) == ["m.layer.lora_A.weight", "m.layer.lora_B.weight"]

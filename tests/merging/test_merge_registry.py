"""Merge method registry: names, declared parameters, and every method end to end on PEFT states."""

import inspect

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from strategies.merging import (
    MERGE_METHODS,
    PEFT_NAMES,
    MergeMethod,
    fedit,
    get_merge_method,
    knots,
    merge_adapters,
    sparse_task_arithmetic,
    task_arithmetic,
)
from strategies.merging.sparsify import PIPELINES
from tests.merging.factories import state_statistics

PEFT_COMBINATION_TYPES = ["linear", "cat", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"]
METHODS = [
    "fedit",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "knots",
    "median",
    "trimmed_mean",
    "regmean",
    "fisher",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "sce",
]


def test_task_arithmetic_is_registered():
    # Execute
    method = get_merge_method("task_arithmetic")

    # Assert
    assert method.fn is task_arithmetic
    assert method.exact and method.paper == "https://arxiv.org/abs/2212.04089"
    assert method.params == {"form": "svd"}


def test_every_method_and_peft_name_is_registered():
    assert set(MERGE_METHODS) == set(METHODS) | set(PEFT_COMBINATION_TYPES)
    assert set(PEFT_NAMES) == set(PEFT_COMBINATION_TYPES)


def test_registry_keys_are_method_names_and_cite_papers():
    assert all(name == method.name for name, method in MERGE_METHODS.items())
    assert all(method.paper.startswith("https://arxiv.org/abs/") for method in MERGE_METHODS.values())


def test_only_the_methods_that_average_factors_are_inexact():
    assert sorted(name for name, m in MERGE_METHODS.items() if not m.exact) == ["fedit", "fisher", "linear"]
    assert "INEXACT" in fedit.__doc__ and "INEXACT" in MERGE_METHODS["fedit"].description
    assert "INEXACT" in MERGE_METHODS["fisher"].description


def test_data_aware_methods_declare_their_statistics_and_parameters():
    assert {n: m.stats for n, m in MERGE_METHODS.items() if m.stats} == {"regmean": "gram", "fisher": "fisher"}
    assert get_merge_method("regmean").params == {"alpha": 0.9, "ridge": 0.0}
    assert get_merge_method("fisher").params == {"floor": 1e-8}


@pytest.mark.parametrize(
    ("name", "params", "bound"),
    [
        ("cat", {}, {"form": "cat"}),
        ("svd", {}, {"form": "svd"}),
        ("ties", {"density": 0.2, "majority_sign_method": "total", "normalize": "weights"}, {"pipeline": "ties"}),
        ("ties_svd", {"density": 0.2, "majority_sign_method": "total", "normalize": "count"}, {"pipeline": "ties"}),
        ("dare_linear", {"density": 0.5, "seed": 0}, {"pipeline": "dare_linear"}),
        (
            "dare_ties_svd",
            {"density": 0.5, "seed": 0, "majority_sign_method": "total", "normalize": "count"},
            {"pipeline": "dare_ties"},
        ),
        ("magnitude_prune_svd", {"density": 0.2}, {"pipeline": "magnitude_prune"}),
        (
            "knots",
            {"inner": "ties", "density": 0.2, "seed": 0, "majority_sign_method": "total", "normalize": "weights"},
            {},
        ),
        ("linear", {}, {}),
    ],
)
def test_declared_parameters(name, params, bound):
    method = get_merge_method(name)
    assert method.params == params and method.bound == bound
    assert method.resolve() == params | bound


def test_parameters_and_defaults_are_read_from_the_function_signature():
    # one home for a default: knots' signature (the registry declares none of its own)
    signature = inspect.signature(knots).parameters
    declared = {name: p.default for name, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert get_merge_method("knots").params == declared
    # a pipeline's density default lives in its PIPELINES entry
    assert get_merge_method("dare_ties").params["density"] == PIPELINES["dare_ties"].density


def test_a_parameter_without_a_default_is_refused_at_registration():
    def needs_density(adapters, weights, scale=1.0, rank=None, *, density):
        return task_arithmetic(adapters, weights, scale, rank)

    with pytest.raises(TypeError, match=r"needs_density has no default for 'density'"):
        MergeMethod("needs_density", needs_density, "https://arxiv.org/abs/0000.00000", True, "a test method")


def test_resolve_overrides_defaults_and_rejects_unknown_parameters():
    ties = get_merge_method("ties")
    assert ties.resolve({"density": 0.7})["density"] == 0.7
    with pytest.raises(
        ValueError,
        match=r"merge method 'ties' has no parameter 'seed'; its parameters are \['density', 'majority_sign_method', 'normalize'\]",
    ):
        ties.resolve({"seed": 1})
    with pytest.raises(ValueError, match=r"merge method 'cat' has no parameter 'form'; it takes no parameters"):
        get_merge_method("cat").resolve({"form": "svd"})


def test_unknown_method_lists_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown merge method 'tie'; choose one of \['breadcrumbs', 'breadcrumbs_ties', 'cat', 'dare_linear', ",
    ):
        get_merge_method("tie")


def test_merge_adapters_resolves_method_names():
    # Prepare
    state = {"m.lora_A.weight": torch.ones(1, 3), "m.lora_B.weight": torch.ones(2, 1)}

    # Execute
    merged = merge_adapters([state], [2.0], [1.0], ["t"], method="task_arithmetic")

    # Assert
    delta = merged.state["m.lora_B.weight"] @ merged.state["m.lora_A.weight"]
    torch.testing.assert_close(delta, torch.full((2, 3), 2.0))
    assert merged.method == "task_arithmetic" and merged.params == {"form": "svd"}
    with pytest.raises(ValueError, match=r"unknown merge method 'dare'; choose one of \['breadcrumbs', "):
        merge_adapters([state], [2.0], [1.0], ["t"], method="dare")


def test_merge_adapters_checks_params_against_the_method():
    state = {"m.lora_A.weight": torch.ones(1, 3), "m.lora_B.weight": torch.ones(2, 1)}
    with pytest.raises(ValueError, match=r"merge method 'svd' has no parameter 'density'; it takes no parameters"):
        merge_adapters([state], [1.0], [1.0], ["t"], method="svd", params={"density": 0.5})
    with pytest.raises(ValueError, match=r"LoRA module 'm': density .* got 2.0"):
        merge_adapters([state], [1.0], [1.0], ["t"], method="ties", params={"density": 2.0})


def test_a_registered_function_passed_directly_is_that_method():
    state = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(2, 2)}
    merged = merge_adapters([state, state], [1.0, 1.0], [0.5, 0.5], ["t", "t"], method=fedit)
    assert merged.method == "fedit" and not merged.exact and merged.relative_error == 0.0


# every registered method on real PEFT adapters, loaded back into PEFT


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(12, 12)
        self.v_proj = nn.Linear(12, 6)
        self.heads = nn.ModuleDict({"breastmnist": nn.Linear(6, 2), "pneumonia": nn.Linear(6, 3)})


def peft_model(r: int, alpha: int, seed: int):
    torch.manual_seed(0)
    base = TinyModel()
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["breastmnist", "pneumonia"],
        init_lora_weights=False,
    )
    return get_peft_model(base, config)


@pytest.fixture(scope="module")
def hospitals():
    specs = [(4, 8, 1), (4, 4, 2), (4, 16, 3)]
    return [get_peft_model_state_dict(peft_model(r, a, seed)) for r, a, seed in specs], [a / r for r, a, _ in specs]


@pytest.mark.parametrize("name", sorted(MERGE_METHODS))
def test_every_method_gives_a_loadable_adapter(hospitals, name):
    # Prepare
    states, scales = hospitals
    rank = None if name == "cat" else 3
    kind = MERGE_METHODS[name].stats
    stats = [state_statistics(s, kind, i) for i, s in enumerate(states)] if kind else None

    # Execute
    merged = merge_adapters(
        states,
        scales,
        [0.5, 0.3, 0.2],
        ["breastmnist", "pneumonia", "breastmnist"],
        rank=rank,
        method=name,
        stats=stats,
    )
    model = peft_model(merged.rank, merged.lora_alpha, seed=9)
    loaded = set_peft_model_state_dict(model, merged.state)

    # Assert
    assert loaded.unexpected_keys == []
    assert merged.method == name and merged.params == get_merge_method(name).resolve()
    assert merged.rank == (12 if name == "cat" else 3)
    assert merged.exact == (name == "cat")  # every other merge was truncated to rank 3
    q = model.base_model.model.q_proj
    delta = q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert torch.isfinite(delta).all() and torch.linalg.norm(delta) > 0


def test_seed_fixes_dare_across_modules(hospitals):
    states, scales = hospitals
    args = (states, scales, [1 / 3] * 3, ["breastmnist"] * 3)
    first = merge_adapters(*args, rank=4, method="dare_ties", params={"seed": 5})
    again = merge_adapters(*args, rank=4, method="dare_ties", params={"seed": 5})
    other = merge_adapters(*args, rank=4, method="dare_ties", params={"seed": 6})
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    assert not torch.equal(
        first.state["base_model.model.q_proj.lora_A.weight"], other.state["base_model.model.q_proj.lora_A.weight"]
    )


def test_sparse_pipeline_is_shared():
    # TIES, DARE and magnitude pruning are one function configured by a bound pipeline name
    names = ["ties", "dare_linear", "dare_ties", "magnitude_prune"]
    assert all(get_merge_method(n).fn is sparse_task_arithmetic for n in names)
    assert [get_merge_method(n).bound["pipeline"] for n in names] == names

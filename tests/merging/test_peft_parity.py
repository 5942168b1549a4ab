"""The project's merges against PEFT's `add_weighted_adapter` on real PEFT LoRA adapters.

Every hospital adapter lives on one PeftModel (`add_adapter`), PEFT merges them into a new adapter,
and the project merges the same adapters' `get_peft_model_state_dict`. Compared: the merged ΔW of
every module, relative Frobenius error < TOL (both sides compute in float32). Where PEFT differs from
the math on purpose or by a bug, the test states it and checks the math instead.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from peft.utils import merge_utils
from torch import nn

from strategies.merging import fedit, merge_adapters, split_lora_modules, task_arithmetic
from strategies.merging.lowrank import LoraFactors

TOL = 1e-5  # float32 ΔW on both sides; observed 1e-7 to 2e-6
MODULES = ("q_proj", "v_proj")
SVD_RANK = 12  # <= min(d_out, d_in) of every module: PEFT breaks above it (see test_peft_svd_rank_above_module_size)


class TinyModel(nn.Module):
    """q_proj 16->16 and v_proj 16->12: a square and a wide module."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v_proj(self.q_proj(x))


def hospitals_on_one_model(ranks, alphas, seed=0):
    """One PeftModel holding adapters h0, h1, ... (random A and B), and each adapter's state dict."""
    torch.manual_seed(seed)
    model = None
    for i, (r, alpha) in enumerate(zip(ranks, alphas)):
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(MODULES), init_lora_weights=False)
        if model is None:
            model = get_peft_model(TinyModel(), config, adapter_name=f"h{i}")
        else:
            model.add_adapter(f"h{i}", config)
    states = [get_peft_model_state_dict(model, adapter_name=f"h{i}") for i in range(len(ranks))]
    return model, states, [a / r for r, a in zip(ranks, alphas)]


def peft_merge(model, weights, combination_type, *, seed=None, **kwargs) -> dict[str, torch.Tensor]:
    """PEFT's merged ΔW per module. DARE: PEFT first initialises the new adapter from the global RNG,
    then draws its masks from it, so the RNG is seeded right after that initialisation."""
    name = f"merged-{combination_type}-{len(model.peft_config)}"
    if seed is not None:
        inject = model.base_model.inject_adapter

        def inject_then_seed(*args, **kw):
            out = inject(*args, **kw)
            torch.manual_seed(seed)
            return out

        model.base_model.inject_adapter = inject_then_seed
    try:
        adapters = [n for n in model.peft_config if n.startswith("h")]
        model.add_weighted_adapter(adapters, list(weights), name, combination_type=combination_type, **kwargs)
    finally:
        model.base_model.__dict__.pop("inject_adapter", None)
    layers = {m: model.base_model.model.get_submodule(m) for m in MODULES}
    return {m: layer.get_delta_weight(name).double() for m, layer in layers.items()}


def project_merge(states, scales, weights, method, **kwargs) -> dict[str, torch.Tensor]:
    merged = merge_adapters(states, scales, weights, ["task"] * len(states), method=method, **kwargs)
    modules = split_lora_modules(merged.state, 1.0)
    return {m: modules[f"base_model.model.{m}"].delta().double() for m in MODULES}


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


def assert_same_deltas(ours, peft, tol=TOL):
    errors = {m: rel(ours[m], peft[m]) for m in MODULES}
    assert max(errors.values()) < tol, errors


@pytest.fixture(scope="module")
def mixed():
    """Three hospitals with different ranks and scalings (alpha / r = 2, 0.5, 1)."""
    return hospitals_on_one_model(ranks=[2, 4, 8], alphas=[4, 2, 8])


@pytest.fixture(scope="module")
def same_rank():
    """Three hospitals of rank 4 with different scalings (alpha / r = 2, 1, 4)."""
    return hospitals_on_one_model(ranks=[4, 4, 4], alphas=[8, 4, 16], seed=1)


WEIGHTS = [0.5, 0.3, 0.2]


# exact: cat and svd


def test_cat_matches_peft(mixed):
    model, states, scales = mixed
    ours = project_merge(states, scales, WEIGHTS, "cat")
    assert_same_deltas(ours, peft_merge(model, WEIGHTS, "cat"))


@pytest.mark.parametrize("rank", [SVD_RANK, 3])
def test_svd_matches_peft(mixed, rank):
    # rank 12 is lossless here (Σ r_i = 14 >= 12 = the smaller module's cap; q_proj's 14 directions truncate to 12)
    model, states, scales = mixed
    ours = project_merge(states, scales, WEIGHTS, "svd", rank=rank)
    assert_same_deltas(ours, peft_merge(model, WEIGHTS, "svd", svd_rank=rank))


def test_svd_negative_weights_match_peft(mixed):
    model, states, scales = mixed
    weights = [1.0, -0.7, 0.4]
    ours = project_merge(states, scales, weights, "svd", rank=SVD_RANK)
    assert_same_deltas(ours, peft_merge(model, weights, "svd", svd_rank=SVD_RANK))


# ΔW-space sparsifying methods (PEFT's *_svd)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ties_svd", {"density": 0.3, "normalize": "count"}),
        ("ties_svd", {"density": 0.5, "normalize": "count", "majority_sign_method": "frequency"}),
        ("magnitude_prune_svd", {"density": 0.3}),
    ],
    ids=["ties", "ties-frequency", "magnitude_prune"],
)
def test_trimming_methods_match_peft(mixed, method, params):
    model, states, scales = mixed
    ours = project_merge(states, scales, WEIGHTS, method, rank=SVD_RANK, params=params)
    peft = peft_merge(
        model,
        WEIGHTS,
        method,
        svd_rank=SVD_RANK,
        density=params["density"],
        majority_sign_method=params.get("majority_sign_method", "total"),
    )
    assert_same_deltas(ours, peft)


@pytest.mark.parametrize(
    ("method", "params"),
    [("dare_linear_svd", {"density": 0.6}), ("dare_ties_svd", {"density": 0.6, "normalize": "count"})],
    ids=["dare_linear", "dare_ties"],
)
def test_dare_matches_peft_with_the_same_seed(mixed, method, params):
    # same seed, same masks: both draw torch.bernoulli(full_like(ΔW_i, density)) adapter after adapter,
    # module after module, from one CPU generator
    model, states, scales = mixed
    ours = project_merge(states, scales, WEIGHTS, method, rank=SVD_RANK, params=params | {"seed": 7})
    peft = peft_merge(model, WEIGHTS, method, seed=7, svd_rank=SVD_RANK, density=params["density"])
    assert_same_deltas(ours, peft)
    other_seed = project_merge(states, scales, WEIGHTS, method, rank=SVD_RANK, params=params | {"seed": 8})
    assert rel(other_seed["q_proj"], peft["q_proj"]) > 0.05


@pytest.mark.parametrize(("alias", "peft_kwargs"), [("ties_svd", {}), ("dare_ties_svd", {"seed": 7})])
def test_peft_aliases_merge_as_peft_does_with_their_defaults(mixed, alias, peft_kwargs):
    # PEFT's names take PEFT's defaults (normalize 'count'): no parameter beyond the density is needed
    model, states, scales = mixed
    params = {"density": 0.5} | peft_kwargs
    ours = project_merge(states, scales, WEIGHTS, alias, rank=SVD_RANK, params=params)
    assert_same_deltas(ours, peft_merge(model, WEIGHTS, alias, svd_rank=SVD_RANK, **params))


def test_ties_default_normalisation_is_the_weighted_disjoint_mean(mixed):
    # PEFT divides Σ_agree w_i x_i by the number of agreeing adapters, so weights summing to 1 shrink
    # the TIES ΔW by ~1/N; the project's default divides by Σ_agree |w_i| (mergekit; TIES' mean when
    # weights are equal). With weights 1 the two agree, so check that, and the default against the math.
    model, states, scales = mixed
    ones = [1.0, 1.0, 1.0]
    peft = peft_merge(model, ones, "ties_svd", svd_rank=SVD_RANK, density=0.3)
    assert_same_deltas(project_merge(states, scales, ones, "ties", rank=SVD_RANK, params={"density": 0.3}), peft)
    # the math for WEIGHTS: PEFT's own trim and sign election, then the weighted disjoint mean
    ours = project_merge(states, scales, WEIGHTS, "ties", rank=None, params={"density": 0.3})
    for m in MODULES:
        deltas = torch.stack(
            [split_lora_modules(s, sc)[f"base_model.model.{m}"].delta() for s, sc in zip(states, scales)]
        )
        trimmed = torch.stack([merge_utils.prune(d, 0.3, "magnitude") for d in deltas])
        agree = merge_utils.calculate_majority_sign_mask(trimmed, "total")
        w = torch.tensor(WEIGHTS)[:, None, None]
        expected = (trimmed * w * agree).sum(0) / (w.abs() * agree).sum(0).clamp(min=1e-30)
        assert rel(ours[m], expected.double()) < TOL


# where PEFT differs from the math


def test_linear_is_fedit_with_square_root_weights(same_rank):
    # PEFT's `linear` multiplies each factor by sqrt(w_i · s_i) (PEFT PR #1169), so PEFT linear(w) equals
    # FedIT's factor average with weights sqrt(w): checked here against the project's fedit.
    model, states, scales = same_rank
    ours = project_merge(states, scales, [w**0.5 for w in WEIGHTS], "linear")
    assert_same_deltas(ours, peft_merge(model, WEIGHTS, "linear"))


def test_linear_in_peft_does_not_average_identical_adapters(same_rank):
    # Averaging two copies of one adapter with weights 0.5, 0.5 should give that adapter back. FedIT does;
    # PEFT's linear gives (2 sqrt(0.5))^2 = 2 times it (its sqrt weights meet the factor cross terms,
    # huggingface/peft#3004). Checked against the math, PEFT's factor is recorded.
    model, _, twin_scales = hospitals_on_one_model(ranks=[4, 4], alphas=[8, 8], seed=1)
    for m in MODULES:
        layer = model.base_model.model.get_submodule(m)
        for factor in (layer.lora_A, layer.lora_B):
            factor["h1"].weight.data.copy_(factor["h0"].weight)
    twins = [get_peft_model_state_dict(model, adapter_name="h0")] * 2
    own = {m: model.base_model.model.get_submodule(m).get_delta_weight("h0").double() for m in MODULES}

    ours = project_merge(twins, twin_scales, [0.5, 0.5], "fedit")
    peft = peft_merge(model, [0.5, 0.5], "linear")

    assert_same_deltas(ours, own)
    assert_same_deltas(peft, {m: 2 * d for m, d in own.items()})


def test_fedit_negative_weight_negates(same_rank):
    # PEFT (>= 0.18) puts a weight's sign on A only, as the project does; a single adapter with weight -1
    # then negates in both. The exact cross-term-free result for several adapters is task_arithmetic.
    model, states, scales = same_rank
    ours = project_merge(states[:1], scales[:1], [-1.0], "fedit")
    own = {m: model.base_model.model.get_submodule(m).get_delta_weight("h0").double() for m in MODULES}
    assert_same_deltas(ours, {m: -d for m, d in own.items()})


def test_peft_svd_rank_above_module_size_gives_a_broken_adapter(mixed):
    # PEFT allocates the new adapter at svd_rank but fills it with min(svd_rank, d_out, d_in) singular
    # triplets, so a module smaller than svd_rank gets A and B of inconsistent shapes. The project
    # clips the rank per module and pads, so every module stays loadable.
    model, states, scales = mixed
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        peft_merge(model, WEIGHTS, "svd", svd_rank=14)
    ours = project_merge(states, scales, WEIGHTS, "svd", rank=14)
    factors = [split_lora_modules(s, sc) for s, sc in zip(states, scales)]
    for m in MODULES:
        exact, _ = task_arithmetic([f[f"base_model.model.{m}"] for f in factors], WEIGHTS)
        assert rel(ours[m], exact.delta().double()) < TOL


def test_fedit_refuses_mixed_ranks_like_peft_linear(mixed):
    model, states, scales = mixed
    with pytest.raises(ValueError, match="same r value"):
        peft_merge(model, WEIGHTS, "linear")
    with pytest.raises(ValueError, match=r"fedit averages A and B separately.*got ranks \[2, 4, 8\]"):
        project_merge(states, scales, WEIGHTS, "fedit")


def test_fedit_function_matches_formula():
    # FedIT with one scaling s: ΔW = s (Σ w_i B_i)(Σ w_i A_i)
    g = torch.Generator().manual_seed(0)
    adapters = [
        LoraFactors(A=torch.randn(3, 5, generator=g), B=torch.randn(4, 3, generator=g), scale=2.0) for _ in range(3)
    ]
    merged, error = fedit(adapters, WEIGHTS)
    expected = 2.0 * sum(w * a.B for a, w in zip(adapters, WEIGHTS)) @ sum(w * a.A for a, w in zip(adapters, WEIGHTS))
    assert error == 0.0
    torch.testing.assert_close(merged.delta(), expected, rtol=1e-5, atol=1e-5)

"""RegMean: least squares on the stacked data, task arithmetic at identity Grams, factored = dense."""

import pytest
import torch

from strategies.merging import get_merge_method, merge_adapters
from strategies.merging.regmean import regmean, regmean_dense, regmean_heads, scale_off_diagonal
from tests.merging.factories import random_adapter, rel


def inputs(n: int, d_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d_in, dtype=torch.float64)


def test_regmean_on_one_linear_layer_is_the_least_squares_fit_of_the_stacked_data():
    # Prepare: three hospitals' updates and inputs; Grams as hospitals send them (means) with n_i weights
    adapters = [random_adapter(5, 7, r, s, seed) for seed, (r, s) in enumerate([(2, 1.0), (3, 0.5), (1, 2.0)])]
    X = [inputs(n, 7, 10 + i) for i, n in enumerate([40, 25, 60])]
    grams = [x.T @ x / len(x) for x in X]
    weights = [len(x) / 125 for x in X]

    # Execute: plain RegMean (alpha 1)
    merged, error = regmean(adapters, weights, stats=[{"gram": g} for g in grams], alpha=1.0)

    # Assert: argmin_W Σ ||X_i Wᵀ - X_i ΔW_iᵀ||² by least squares on the stacked rows
    stacked_x = torch.cat(X)
    stacked_y = torch.cat([x @ a.delta().T for x, a in zip(X, adapters)])
    least_squares = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    assert error == 0.0 and merged.rank <= 6
    assert rel(merged.delta(), least_squares) < 1e-5


def test_regmean_at_identity_grams_is_task_arithmetic_with_weights_summing_to_one():
    # Prepare
    adapters = [random_adapter(6, 4, 3, s, seed) for seed, s in enumerate([1.0, 2.0, 0.5])]
    identity = [{"gram": torch.eye(4, dtype=torch.float64)}] * 3
    weights = [0.5, 0.3, 0.2]  # what uniform and num_examples weights always sum to
    task_arithmetic = get_merge_method("task_arithmetic")

    # Execute
    merged, _ = regmean(adapters, weights, stats=identity)
    expected, _ = task_arithmetic.fn(adapters, weights, **task_arithmetic.resolve())

    # Assert: Σ w_i ΔW_i (the project's task arithmetic is a weighted sum, not a mean)
    assert rel(merged.delta(), expected.delta()) < 1e-10
    # weights not summing to 1 are normalised: Σ w_i ΔW_i / Σ w_i
    doubled, _ = regmean(adapters, [2 * w for w in weights], stats=identity)
    assert rel(doubled.delta(), expected.delta()) < 1e-10


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.3, 0.0])
def test_factored_regmean_equals_the_dense_formula(alpha):
    # Prepare
    adapters = [random_adapter(8, 6, r, 1.5, seed) for seed, r in enumerate([2, 4, 1])]
    grams = [inputs(30, 6, 20 + i).T @ inputs(30, 6, 20 + i) / 30 for i in range(3)]
    weights = [0.2, 0.5, 0.3]

    # Execute
    merged, error = regmean(adapters, weights, scale=0.7, stats=[{"gram": g} for g in grams], alpha=alpha)
    dense = 0.7 * regmean_dense([a.delta() for a in adapters], grams, weights, alpha=alpha)

    # Assert
    assert error == 0.0 and merged.rank == 6  # min(Σ r_i = 7, d_out, d_in)
    assert rel(merged.delta(), dense) < 1e-10


def test_off_diagonal_scaling_keeps_the_diagonal():
    gram = inputs(10, 3, 1).T @ inputs(10, 3, 1)
    scaled = scale_off_diagonal(gram, 0.25)
    assert torch.equal(torch.diagonal(scaled), torch.diagonal(gram))
    torch.testing.assert_close(
        scaled - torch.diag(torch.diagonal(scaled)), 0.25 * (gram - torch.diag(torch.diagonal(gram)))
    )


def test_an_input_channel_nobody_saw_gets_no_update_instead_of_a_singular_solve():
    # Prepare: channel 2 is zero at every hospital, so Σ G is singular
    adapters = [random_adapter(4, 3, 2, 1.0, seed) for seed in range(2)]
    X = [inputs(20, 3, 5 + i) * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) for i in range(2)]

    # Execute
    merged, _ = regmean(adapters, [0.5, 0.5], stats=[{"gram": x.T @ x / 20} for x in X], alpha=1.0)

    # Assert: finite, and the fit on the inputs that exist is the least-squares one
    delta = merged.delta()
    assert torch.isfinite(delta).all() and delta[:, 2].abs().max() < 1e-8
    stacked_x = torch.cat(X)[:, :2]
    stacked_y = torch.cat([x @ a.delta().T for x, a in zip(X, adapters)])
    assert rel(delta[:, :2], torch.linalg.lstsq(stacked_x, stacked_y).solution.T) < 1e-6


def test_regmean_refuses_negative_weights_missing_grams_and_bad_alpha():
    adapters = [random_adapter(4, 3, 2, 1.0, seed) for seed in range(2)]
    grams = [{"gram": torch.eye(3)}] * 2
    with pytest.raises(ValueError, match="must be >= 0"):
        regmean(adapters, [1.0, -1.0], stats=grams)
    with pytest.raises(ValueError, match=r"strategy.stats=\[gram\]"):
        regmean(adapters, [0.5, 0.5], stats=[{"gram": torch.eye(3)}, {}])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        regmean(adapters, [0.5, 0.5], stats=[{"gram": torch.eye(3)}, {"gram": torch.eye(2)}])
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
        regmean(adapters, [0.5, 0.5], stats=grams, alpha=1.5)


def test_heads_merge_by_regmean_on_features_with_a_bias_column():
    # Prepare: two heads (3 classes, 4 features) and each hospital's features
    g = torch.Generator().manual_seed(0)
    heads = [
        {
            "weight": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "bias": torch.randn(3, generator=g, dtype=torch.float64),
        }
        for _ in range(2)
    ]
    X = [torch.cat([inputs(30, 4, 40 + i), torch.ones(30, 1, dtype=torch.float64)], dim=1) for i in range(2)]

    # Execute
    merged = regmean_heads(heads, [{"gram": x.T @ x / 30} for x in X], [0.5, 0.5], alpha=1.0)

    # Assert: the least-squares fit of both heads' logits on the stacked features
    targets = torch.cat([x @ torch.cat([h["weight"], h["bias"][:, None]], 1).T for x, h in zip(X, heads)])
    fit = torch.linalg.lstsq(torch.cat(X), targets).solution.T
    assert rel(merged["weight"], fit[:, :-1]) < 1e-8 and rel(merged["bias"], fit[:, -1]) < 1e-8


def test_merge_adapters_with_regmean_reads_each_module_and_head_gram():
    # Prepare: flat states of two hospitals on one task, one LoRA module, one head
    module, head = "m.q", "m.heads.t"
    states, stats = [], []
    for seed in range(2):
        a = random_adapter(5, 4, 2, 1.0, seed, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        states.append(
            {
                f"{module}.lora_A.weight": a.A,
                f"{module}.lora_B.weight": a.B,
                f"{head}.weight": torch.randn(2, 5, generator=g),
                f"{head}.bias": torch.randn(2, generator=g),
            }
        )
        x = inputs(16, 4, seed).float()
        features = torch.cat([inputs(16, 5, 9 + seed).float(), torch.ones(16, 1)], 1)
        stats.append({f"{module}.gram": x.T @ x / 16, f"{head}.gram": features.T @ features / 16})

    # Execute
    merged = merge_adapters(states, [1.0, 1.0], [0.5, 0.5], ["t", "t"], method="regmean", stats=stats)
    without = merge_adapters(states, [1.0, 1.0], [0.5, 0.5], ["t", "t"], method="task_arithmetic")

    # Assert: the head is RegMean's, not the average
    assert merged.method == "regmean" and merged.exact
    assert not torch.allclose(merged.state[f"{head}.weight"], without.state[f"{head}.weight"])
    with pytest.raises(ValueError, match=r"hospitals \[1\] have none: run with strategy.stats=\[gram\]"):
        merge_adapters(states, [1.0, 1.0], [0.5, 0.5], ["t", "t"], method="regmean", stats=[stats[0], {}])

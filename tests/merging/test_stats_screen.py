"""Screening merge statistics: malformed Grams and Fishers are refused with a named reason, the rest merged."""

import dataclasses

import pytest
import torch

from strategies.merging import ScreenSettings, Submission, merge_adapters, screen_adapters
from tests.merging.factories import state_statistics
from tests.merging.test_validation import Q, V, adapter, head, layout


def submissions(kind: str, n: int = 4) -> list[Submission]:
    states = [adapter(i) for i in range(n)]
    return [Submission(10 + i, "breastmnist", s, 4, 4.0, state_statistics(s, kind, i)) for i, s in enumerate(states)]


def spoil(sub: Submission, key: str, tensor: torch.Tensor) -> Submission:
    return dataclasses.replace(sub, stats={**sub.stats, key: tensor})


def rejections(result) -> dict[int, str]:
    return {r.hospital_id: f"{r.key}: {r.problem}" for r in result.rejections}


def test_healthy_statistics_pass():
    for kind in ("gram", "fisher"):
        result = screen_adapters(submissions(kind), layout(), stats=(kind,))
        assert result.accepted == [0, 1, 2, 3] and result.rejections == []


@pytest.mark.parametrize(
    ("spoiled", "reason"),
    [
        (lambda g: g + torch.triu(torch.ones_like(g), 1), "not symmetric"),
        (lambda g: g - 2 * g.trace() * torch.eye(len(g)) / len(g), "not positive semi-definite"),
        (lambda g: torch.where(torch.eye(len(g), dtype=torch.bool), torch.nan, g), "NaN or Inf"),
        (lambda g: g[:-1, :-1], "shape (15, 15), the hospital's adapter implies (16, 16)"),
        (lambda g: g * 1e9, "max_gram_scale"),
    ],
)
def test_a_malformed_gram_is_refused_with_its_reason_and_the_rest_merged(spoiled, reason):
    # Prepare: hospital 11's Gram of q_proj spoiled
    subs = submissions("gram")
    key = f"{Q}.gram"
    subs[1] = spoil(subs[1], key, spoiled(subs[1].stats[key]))

    # Execute
    result = screen_adapters(subs, layout(), stats=("gram",))
    merged = merge_adapters(
        result.states,
        [1.0] * 3,
        [1 / 3] * 3,
        ["breastmnist"] * 3,
        method="regmean",
        stats=[subs[i].stats for i in result.accepted],
    )

    # Assert
    assert result.accepted == [0, 2, 3]
    assert list(rejections(result)) == [11] and key in rejections(result)[11] and reason in rejections(result)[11]
    assert all(torch.isfinite(t).all() for t in merged.state.values())


def test_a_dominating_gram_is_refused_and_the_others_share_the_solve():
    # Prepare: hospital 12's Gram of v_proj is 100x the others' (each of which is well within the bounds)
    subs = submissions("gram")
    key = f"{V}.gram"
    subs[2] = spoil(subs[2], key, subs[2].stats[key] * 100)

    # Execute
    result = screen_adapters(subs, layout(), stats=("gram",))
    relaxed = screen_adapters(subs, layout(), ScreenSettings(max_gram_share=None), stats=("gram",))

    # Assert
    assert result.accepted == [0, 1, 3]
    assert "dominating Gram" in rejections(result)[12] and "max_gram_share=0.9" in rejections(result)[12]
    assert relaxed.accepted == [0, 1, 2, 3]


def test_missing_and_unexpected_statistics_are_named():
    subs = submissions("gram")
    subs[0] = dataclasses.replace(subs[0], stats={k: v for k, v in subs[0].stats.items() if k != f"{Q}.gram"})
    subs[3] = spoil(subs[3], "base_model.model.k_proj.gram", torch.eye(16))
    result = screen_adapters(subs, layout(), stats=("gram",))
    assert result.accepted == [1, 2]
    assert "missing" in rejections(result)[10] and "unexpected gram statistic" in rejections(result)[13]


@pytest.mark.parametrize(
    ("spoiled", "reason"),
    [
        (lambda f: -f - 1.0, "negative"),
        (lambda f: f.fill_(float("nan")), "NaN or Inf"),
        (lambda f: f[:, :-1], "shape"),
        (lambda f: f + 1e9, "max_fisher"),
    ],
)
def test_a_malformed_fisher_is_refused_and_the_rest_merged(spoiled, reason):
    subs = submissions("fisher")
    key = f"{head('breastmnist', 'weight')}.fisher"
    subs[3] = spoil(subs[3], key, spoiled(subs[3].stats[key].clone()))
    result = screen_adapters(subs, layout(), stats=("fisher",))
    assert result.accepted == [0, 1, 2] and reason in rejections(result)[13] and key in rejections(result)[13]


def test_statistics_a_data_free_merge_does_not_read_are_not_screened():
    subs = submissions("gram")
    subs[1] = spoil(subs[1], f"{Q}.gram", torch.full((16, 16), float("nan")))
    assert screen_adapters(subs, layout()).accepted == [0, 1, 2, 3]

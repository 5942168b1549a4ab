"""Screening hospital adapters: against the server's expected layout first, then within each task.

Every rejection names the hospital, the tensor and the problem; honest hospitals whose tasks differ
are never compared with each other.
"""

import pytest
import torch

from fl_app.adapter_layout import AdapterLayout
from strategies.merging import ScreenSettings, Submission, screen_adapters

Q, V = "base_model.model.q_proj", "base_model.model.v_proj"
CLASSES = {"breastmnist": 2, "pneumoniamnist": 2, "retinamnist": 5}


def head(task: str, param: str) -> str:
    return f"base_model.model.heads.{task}.{param}"


def layout(base_norm: float = 100.0) -> AdapterLayout:
    """The experiment's adapter: LoRA on q (16->16) and v (16->8), a head per task on 8 features."""
    lora = {}
    for module, d_out in ((Q, 16), (V, 8)):
        lora[f"{module}.lora_A.weight"] = torch.zeros(4, 16)
        lora[f"{module}.lora_B.weight"] = torch.zeros(d_out, 4)
    heads = {
        task: {head(task, "weight"): torch.full((n, 8), 0.1), head(task, "bias"): torch.zeros(n)}
        for task, n in CLASSES.items()
    }
    return AdapterLayout.from_states(lora, heads, {Q: base_norm, V: base_norm})


def adapter(seed: int, task: str = "breastmnist", r: int = 4, scale: float = 1.0, shared: int = 0) -> dict:
    """A trained-looking adapter: A from the shared seeded init, B = a task direction + hospital noise, heads likewise."""
    A_gen, B_gen, own = (torch.Generator().manual_seed(s) for s in (1000 + shared, 2000 + shared, seed))
    state = {}
    for module, d_out in ((Q, 16), (V, 8)):
        state[f"{module}.lora_A.weight"] = torch.randn(r, 16, generator=A_gen)
        direction = torch.randn(d_out, r, generator=B_gen)
        state[f"{module}.lora_B.weight"] = scale * (direction + 0.3 * torch.randn(d_out, r, generator=own))
    # heads: the seeded initial head every hospital starts from, plus what its own training moved
    init = torch.Generator().manual_seed(3000 + shared)
    state[head(task, "weight")] = 0.1 * torch.randn(CLASSES[task], 8, generator=init) + 0.03 * torch.randn(
        CLASSES[task], 8, generator=own
    )
    state[head(task, "bias")] = 0.1 * torch.randn(CLASSES[task], generator=init) + 0.03 * torch.randn(
        CLASSES[task], generator=own
    )
    return state


def submit(states: list[dict], tasks: list[str] | None = None, ids: list[int] | None = None, r: int = 4):
    ids = ids or [10 + i for i in range(len(states))]
    tasks = tasks or ["breastmnist"] * len(states)
    return [Submission(h, t, s, r, float(r)) for h, t, s in zip(ids, tasks, states)]


def rejected(result) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for r in result.rejections:
        found.setdefault(r.hospital_id, []).append(f"{r.key}: {r.problem}")
    return found


def test_healthy_adapters_pass_unchanged():
    states = [adapter(i) for i in range(4)]
    result = screen_adapters(submit(states), layout())
    assert result.accepted == [0, 1, 2, 3] and result.rejections == []
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states, result.states) for k in a)


def test_tasks_with_very_different_norms_are_not_compared():
    # Prepare: the MedForge default run's situation: one hospital per task, norms 1x, 22x, 35x
    states = [
        adapter(0, "breastmnist"),
        adapter(1, "pneumoniamnist", scale=22.0),
        adapter(2, "retinamnist", scale=35.0),
    ]
    # Execute
    result = screen_adapters(submit(states, ["breastmnist", "pneumoniamnist", "retinamnist"]), layout(1e4))
    # Assert: all merged; the record says why no relative screen ran
    assert result.accepted == [0, 1, 2] and result.rejections == []
    assert [a.action for a in result.actions] == ["no_majority"] * 3


def test_a_malformed_hospital_never_gets_a_healthy_one_rejected():
    # Prepare: two hospitals, hospital 10 malformed (no v LoRA, wrong q shape)
    bad, good = adapter(0), adapter(1)
    del bad[f"{V}.lora_A.weight"], bad[f"{V}.lora_B.weight"]
    bad[f"{Q}.lora_A.weight"] = torch.randn(4, 12)
    # Execute
    result = screen_adapters(submit([bad, good]), layout())
    # Assert
    assert result.accepted == [1]
    problems = rejected(result)
    assert set(problems) == {10}
    assert any("missing" in p and V in p for p in problems[10])
    assert any("shape (4, 12)" in p and "(r, 16)" in p for p in problems[10])


def test_structure_against_the_expected_layout():
    # Prepare
    states = [adapter(i) for i in range(6)]
    states[0]["base_model.model.k_proj.lora_A.weight"] = torch.randn(4, 16)  # a module nobody asked for
    states[1][f"{V}.lora_B.weight"] = states[1][f"{V}.lora_B.weight"].double()  # dtype
    states[2]["base_model.model.backbone.bias"] = torch.zeros(3)  # neither LoRA nor head
    del states[3][head("breastmnist", "bias")]  # own head incomplete
    states[4][f"{Q}.lora_B.weight"] = torch.randn(16, 3)  # B rank 3, A rank 4, reports 4
    # Execute
    result = screen_adapters(submit(states), layout())
    # Assert
    problems = rejected(result)
    assert result.accepted == [5]
    assert "unexpected LoRA tensor" in problems[10][0]
    assert "dtype torch.float64" in problems[11][0]
    assert "neither a LoRA key nor a head key" in problems[12][0]
    assert "missing: the breastmnist head" in problems[13][0]
    assert "rank 3, but the hospital reports lora-r=4" in problems[14][0]


def test_unknown_task_rejected_and_foreign_heads_dropped():
    # Prepare: hospital 10 claims a task the experiment lacks; hospital 11 also sends a retina head
    states = [adapter(0), adapter(1), adapter(2)]
    extra = adapter(9, "retinamnist")
    states[1] |= {k: v for k, v in extra.items() if "heads" in k}
    # Execute
    result = screen_adapters(submit(states, ["dermamnist", "breastmnist", "breastmnist"]), layout())
    # Assert
    assert result.accepted == [1, 2]
    assert "not one of this experiment's tasks" in rejected(result)[10][0]
    assert not any("retinamnist" in k for k in result.states[0])
    assert any(a.action == "dropped" and a.hospital_id == 11 for a in result.actions)


@pytest.mark.parametrize("r,alpha", [(0, 4.0), (4, float("nan")), (4, float("inf")), (4, -1.0)])
def test_reported_rank_and_alpha(r, alpha):
    states = [adapter(i) for i in range(2)]
    subs = [Submission(10, "breastmnist", states[0], r, alpha), Submission(11, "breastmnist", states[1], 4, 4.0)]
    result = screen_adapters(subs, layout())
    assert result.accepted == [1]
    assert 10 in rejected(result)


def test_nan_and_inf():
    states = [adapter(i) for i in range(3)]
    states[0][f"{Q}.lora_A.weight"][0, 0] = float("nan")
    states[1][head("breastmnist", "bias")][0] = float("inf")
    result = screen_adapters(submit(states), layout())
    assert result.accepted == [2]
    assert "1 of 64 values are NaN or Inf" in rejected(result)[10][0]


def test_absolute_bound_holds_when_the_others_are_untrained():
    # Prepare: three untrained adapters (B = 0, median norm 0) and one huge one
    states = [adapter(i, scale=0.0) for i in range(3)] + [adapter(3, scale=1000.0)]
    # Execute
    result = screen_adapters(submit(states), layout(base_norm=10.0))
    # Assert: the huge one exceeds the pretrained weights' norm; the untrained ones change nothing and
    # are no contribution either
    assert result.accepted == []
    assert "the pretrained weight's norm" in rejected(result)[13][0]
    assert all("zero in every LoRA module" in rejected(result)[h][0] for h in (10, 11, 12))


def test_huge_head_is_rejected_even_alone():
    states = [adapter(0), adapter(1)]
    states[1][head("breastmnist", "weight")] *= 1e6
    result = screen_adapters(submit(states), layout())
    assert result.accepted == [0]
    assert "freshly initialised head" in rejected(result)[11][0]


def test_norm_outlier_within_a_task():
    states = [adapter(i) for i in range(4)]
    states[2] = adapter(2, scale=30.0)
    result = screen_adapters(submit(states), layout(1e6))
    assert result.accepted == [0, 1, 3]
    assert "x the median" in rejected(result)[12][0]
    lenient = screen_adapters(submit(states), layout(1e6), ScreenSettings(norm_factor=100.0, clip_factor=None))
    assert lenient.accepted == [0, 1, 2, 3]


def test_sign_flip_below_the_norm_factor_is_caught_by_direction():
    # Prepare: five hospitals, one sends the negated direction at 8x: it passes the norm screen
    states = [adapter(i) for i in range(5)]
    states[4] = {k: (-8.0 * v if k.endswith("lora_B.weight") else v) for k, v in adapter(4).items()}
    # Execute
    result = screen_adapters(submit(states), layout(1e6))
    off = screen_adapters(
        submit(states), layout(1e6), ScreenSettings(min_cosine=None, min_relative_cosine=None, clip_factor=None)
    )
    # Assert
    assert result.accepted == [0, 1, 2, 3]
    assert "points away" in rejected(result)[14][0]
    assert off.accepted == [0, 1, 2, 3, 4]


def test_clipping_scales_a_large_update_to_the_limit():
    states = [adapter(i) for i in range(5)]
    states[4] = adapter(4, scale=5.0)
    result = screen_adapters(submit(states), layout(1e6), ScreenSettings(clip_factor=2.0))
    assert result.accepted == [0, 1, 2, 3, 4]
    clipped = [a for a in result.actions if a.action == "clipped"]
    assert {a.hospital_id for a in clipped} == {14}
    norms = [float(torch.linalg.norm(s[f"{Q}.lora_B.weight"] @ s[f"{Q}.lora_A.weight"])) for s in result.states]
    median = sorted(norms)[2]
    assert norms[4] == pytest.approx(2.0 * median, rel=1e-4)
    assert torch.equal(result.states[0][f"{Q}.lora_B.weight"], states[0][f"{Q}.lora_B.weight"])


def test_two_hospitals_have_no_majority():
    # A 50x adapter next to one other: no majority to say which is wrong; absolute bounds only
    result = screen_adapters(submit([adapter(0), adapter(1, scale=50.0)]), layout(1e6))
    assert result.accepted == [0, 1]
    assert [a.action for a in result.actions] == ["no_majority"]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"norm_factor": 0.5}, "norm_factor must be >= 1"),
        ({"clip_factor": 0.5}, "clip_factor"),
        ({"min_cosine": 1.0}, "min_cosine"),
        ({"max_update_ratio": float("nan")}, "max_update_ratio"),
        ({"bogus": 1}, "has no setting"),
    ],
)
def test_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        ScreenSettings.from_config(settings)

"""Screening hospital adapters before a merge: every rejection names the hospital, the tensor, the problem."""

import pytest
import torch

from strategies.merging import Rejection, screen_adapters

Q, V = "base_model.model.q_proj", "base_model.model.v_proj"


def head(task: str, param: str) -> str:
    return f"base_model.model.heads.{task}.{param}"


def adapter(seed: int, task: str = "breastmnist", classes: int = 2, r: int = 4, scale: float = 1.0) -> dict:
    """LoRA on q (16->16) and v (16->8), and the hospital's own task head."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for module, d_out in ((Q, 16), (V, 8)):
        state[f"{module}.lora_A.weight"] = torch.randn(r, 16, generator=g)
        state[f"{module}.lora_B.weight"] = scale * torch.randn(d_out, r, generator=g)
    state[head(task, "weight")] = torch.randn(classes, 8, generator=g)
    state[head(task, "bias")] = torch.randn(classes, generator=g)
    return state


def healthy(n: int = 4) -> list[dict]:
    return [adapter(seed) for seed in range(n)]


IDS = [10, 11, 12, 13]


def test_healthy_adapters_pass():
    accepted, rejections = screen_adapters(healthy(), IDS)
    assert accepted == [0, 1, 2, 3] and rejections == []


def test_multi_task_heads_and_mixed_ranks_are_legitimate():
    # Prepare: different tasks send heads of different shapes; hospital 3 trained rank 8
    states = [adapter(0, "breastmnist", 2), adapter(1, "pneumonia", 3), adapter(2, "breastmnist", 2), adapter(3, r=8)]

    # Execute
    accepted, rejections = screen_adapters(states, IDS)

    # Assert
    assert accepted == [0, 1, 2, 3] and rejections == []


def test_missing_and_extra_lora_keys():
    # Prepare
    states = healthy()
    del states[1][f"{V}.lora_B.weight"]
    states[2]["base_model.model.k_proj.lora_A.weight"] = torch.randn(4, 16)

    # Execute
    accepted, rejections = screen_adapters(states, IDS)

    # Assert
    assert accepted == [0, 3]
    assert Rejection(11, f"{V}.lora_B.weight", "missing: most hospitals send this LoRA tensor") in rejections
    assert (
        Rejection(12, "base_model.model.k_proj.lora_A.weight", "unexpected LoRA tensor: most hospitals do not send it")
        in rejections
    )


def test_reference_keys_decide_instead_of_the_majority():
    # Prepare: hospitals 0-2 lack v_proj; the reference says it is expected
    states = healthy()
    for s in states[:3]:
        del s[f"{V}.lora_A.weight"], s[f"{V}.lora_B.weight"]
    reference = set(healthy(1)[0])  # head keys in it are ignored

    # Execute
    accepted, rejections = screen_adapters(states, IDS, reference_keys=reference)

    # Assert
    assert accepted == [3]
    assert {r.hospital_id for r in rejections} == {10, 11, 12}
    assert (
        str(rejections[0]) == f"hospital 10: {V}.lora_A.weight: missing: the reference adapters send this LoRA tensor"
    )


def test_shape_and_dtype_mismatches():
    # Prepare
    states = healthy()
    states[1][f"{Q}.lora_A.weight"] = torch.randn(4, 12)  # d_in 12 instead of 16
    states[2][f"{V}.lora_B.weight"] = states[2][f"{V}.lora_B.weight"].double()
    states[3][head("breastmnist", "weight")] = torch.randn(5, 8)

    # Execute
    accepted, rejections = screen_adapters(states, IDS)

    # Assert
    assert accepted == [0]
    assert Rejection(11, f"{Q}.lora_A.weight", "shape (4, 12), but most hospitals send (r, 16)") in rejections
    assert (
        Rejection(12, f"{V}.lora_B.weight", "dtype torch.float64, but most hospitals send torch.float32") in rejections
    )
    assert Rejection(13, head("breastmnist", "weight"), "shape (5, 8), but most hospitals send (2, 8)") in rejections


def test_inconsistent_rank_within_one_module():
    states = healthy()
    states[2][f"{Q}.lora_B.weight"] = torch.randn(16, 6)
    accepted, rejections = screen_adapters(states, IDS)
    assert accepted == [0, 1, 3]
    assert rejections == [Rejection(12, f"{Q}.lora_A.weight", f"rank 4, but {Q}.lora_B.weight (16, 6) has rank 6")]


def test_nan_and_inf():
    # Prepare
    states = healthy()
    states[0][f"{Q}.lora_B.weight"][0, :3] = torch.nan
    states[3][head("breastmnist", "bias")][1] = torch.inf

    # Execute
    accepted, rejections = screen_adapters(states, IDS)

    # Assert
    assert accepted == [1, 2]
    assert rejections == [
        Rejection(10, f"{Q}.lora_B.weight", "3 of 64 values are NaN or Inf"),
        Rejection(13, head("breastmnist", "bias"), "1 of 2 values are NaN or Inf"),
    ]


def test_norm_far_above_the_others():
    # Prepare: hospital 13's B is 50x larger, so its ΔW norm is about 50x the median
    states = healthy(3) + [adapter(3, scale=50.0)]

    # Execute
    accepted, rejections = screen_adapters(states, IDS)
    lenient, _ = screen_adapters(states, IDS, norm_factor=100.0)

    # Assert
    assert accepted == [0, 1, 2] and lenient == [0, 1, 2, 3]
    assert [(r.hospital_id, r.key) for r in rejections] == [(13, Q), (13, V)]
    assert (
        "ΔW norm ||s·B·A|| =" in rejections[0].problem and "of the other hospitals (limit 10x)" in rejections[0].problem
    )


def test_norm_uses_the_scales():
    # a scale of 50 counts like a 50x larger B; per-module scales are looked up by module path
    states = healthy()
    accepted, rejections = screen_adapters(states, IDS, scales=[1.0, 1.0, {Q: 50.0, V: 1.0}, 1.0])
    assert accepted == [0, 1, 3] and [(r.hospital_id, r.key) for r in rejections] == [(12, Q)]


def test_two_hospitals_and_zero_adapters():
    # with two hospitals, the larger one is compared with the other; all-zero ΔWs (B = 0 at init) are not judged
    zeros = [{k: torch.zeros_like(v) if "lora_B" in k else v for k, v in s.items()} for s in healthy(2)]
    assert screen_adapters(zeros, [1, 2]) == ([0, 1], [])
    accepted, _ = screen_adapters([adapter(0), adapter(1, scale=30.0)], [1, 2])
    assert accepted == [0]


def test_unknown_keys_and_empty_states():
    states = healthy(3) + [{"classifier.weight": torch.ones(2, 2)}]
    accepted, rejections = screen_adapters(states, IDS)
    assert accepted == [0, 1, 2]
    problems = [r.problem for r in rejections if r.hospital_id == 13]
    assert problems[0].startswith("no LoRA tensors")
    assert "unexpected tensor: neither a LoRA key" in problems[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hospital_ids": [1]}, "got 1 hospital ids for 4 states"),
        ({"norm_factor": 0.5}, "norm_factor must be a finite number >= 1, got 0.5"),
        ({"scales": [1.0]}, "got 1 scales for 4 states"),
    ],
)
def test_screen_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        screen_adapters(healthy(), **({"hospital_ids": IDS} | kwargs))

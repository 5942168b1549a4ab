"""Malicious hospitals made from an honest adapter: each kind does what its name says, at the stated strength."""

import pytest
import torch

from fl_app.attack.attacks import ATTACKS, INFLATED_COUNT, honest_median_norms, make_attacker
from fl_app.attack.defences import DEFENCES, defence_strategy
from strategies.merging import ScreenSettings
from strategies.merging.validation import module_delta, module_norm

MODULES = ("m.q", "m.v")


def adapter(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for m in MODULES:
        state[f"{m}.lora_A.weight"] = torch.randn(4, 16, generator=g)
        state[f"{m}.lora_B.weight"] = torch.randn(8, 4, generator=g)
    state["m.heads.t.weight"] = torch.randn(2, 8, generator=g)
    return state


HONEST = [adapter(i) for i in range(4)]
MEDIANS = honest_median_norms(HONEST, [2.0] * 4)


NORM_ATTACKS = [a for a in ATTACKS if a not in ("head_flip", "refactor")]  # the ΔW-norm ones


@pytest.mark.parametrize("kind", NORM_ATTACKS)
@pytest.mark.parametrize("factor", [0.5, 3.0, 100.0])
def test_attack_strength_is_a_multiple_of_the_honest_median(kind, factor):
    own = adapter(9)
    bad = make_attacker(kind, own, 2.0, 100, MEDIANS, factor, seed=1)
    expected = 1 / factor if kind == "tiny" else factor
    for m in MODULES:
        assert module_norm(bad.state, m, 2.0) == pytest.approx(expected * MEDIANS[m], rel=1e-5)
    assert torch.equal(bad.state["m.heads.t.weight"], own["m.heads.t.weight"])
    assert bad.n_train == (INFLATED_COUNT if kind == "inflated_count" else 100)


def test_sign_flip_negates_the_own_direction_and_random_does_not_keep_it():
    own = adapter(9)
    cos = torch.nn.functional.cosine_similarity
    flipped = make_attacker("sign_flip", own, 2.0, 100, MEDIANS, 10.0)
    random = make_attacker("random", own, 2.0, 100, MEDIANS, 10.0)
    for m in MODULES:
        mine = module_delta(own, m, 2.0).flatten()
        assert cos(module_delta(flipped.state, m, 2.0).flatten(), mine, dim=0) == pytest.approx(-1.0, abs=1e-6)
        assert abs(float(cos(module_delta(random.state, m, 2.0).flatten(), mine, dim=0))) < 0.5


def test_bad_attack_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown attack 'flip'"):
        make_attacker("flip", adapter(0), 1.0, 1, MEDIANS, 1.0)
    with pytest.raises(ValueError, match="factor must be > 0"):
        make_attacker("scaled", adapter(0), 1.0, 1, MEDIANS, 0.0)


@pytest.mark.parametrize("name", sorted(DEFENCES))
def test_every_defence_is_a_valid_strategy_setting(name):
    strategy = defence_strategy(name, "ties", {"merge": "task_arithmetic", "weighting": "num_examples"})
    ScreenSettings.from_config(strategy["screen"])
    assert strategy["merge"] in ("ties", "median", "trimmed_mean")
    with pytest.raises(ValueError, match="unknown defence"):
        defence_strategy("wall", "ties", {})


def test_head_flip_keeps_the_honest_update_and_negates_the_head_at_the_factor():
    own = adapter(9)
    bad = make_attacker("head_flip", own, 2.0, 100, MEDIANS, 3.0)
    assert all(torch.equal(bad.state[k], own[k]) for k in own if ".lora_" in k)
    assert torch.equal(bad.state["m.heads.t.weight"], -3.0 * own["m.heads.t.weight"])


def test_refactor_keeps_the_update_and_moves_the_factors():
    own = adapter(9)
    bad = make_attacker("refactor", own, 2.0, 100, MEDIANS, 1e3)
    for m in MODULES:
        assert torch.allclose(module_delta(bad.state, m, 2.0), module_delta(own, m, 2.0), rtol=1e-4, atol=1e-6)
        assert float(bad.state[f"{m}.lora_B.weight"].norm()) == pytest.approx(
            1e3 * float(own[f"{m}.lora_B.weight"].norm()), rel=1e-5
        )

"""The accountant: ε of the subsampled Gaussian, calibration to a target, composition over rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fl_app.privacy.accounting import (
    EPSILON_TOLERANCE,
    check_budget,
    epsilon_spent,
    noise_for_epsilon,
    plan,
    training_plan,
)
from fl_app.privacy.settings import NoiseTarget


def gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Without subsampling (q = 1) RDP is exact: steps · α / (2σ²) at order α (Mironov 2017), converted
    with Balle et al. 2020's bound over Opacus's orders; an independent check of the accountant."""
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


@pytest.mark.parametrize(("sigma", "steps", "delta"), [(1.0, 1, 1e-5), (2.0, 10, 1e-4), (5.0, 100, 1e-3)])
def test_full_batch_epsilon_is_the_gaussian_mechanism_in_closed_form(sigma, steps, delta):
    assert epsilon_spent([(sigma, 1.0, steps)], delta) == pytest.approx(gaussian_epsilon(sigma, steps, delta), rel=1e-9)


def test_epsilon_matches_opacus_for_an_mnist_like_setting():
    """σ = 1.1, q = 256/60000, 60 epochs, δ = 1e-5 (Abadi et al.'s MNIST setting); Opacus's own accountant."""
    q, steps = 256 / 60000, 60 * math.ceil(60000 / 256)
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=1.1, sample_rate=q)

    ours = epsilon_spent([(1.1, q, steps)], 1e-5)

    assert ours == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert 1.0 < ours < 5.0  # the published RDP figures for this setting are around 2-3


def test_no_release_spends_nothing_and_more_noise_or_fewer_steps_spend_less():
    assert epsilon_spent([], 1e-5) == 0.0
    base = epsilon_spent([(1.0, 0.05, 100)], 1e-5)
    assert epsilon_spent([(2.0, 0.05, 100)], 1e-5) < base < epsilon_spent([(1.0, 0.05, 200)], 1e-5)


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrated_noise_spends_the_target_within_tolerance(target):
    sigma = noise_for_epsilon(target, 1e-4, 32 / 1000, 192)

    spent = epsilon_spent([(sigma, 32 / 1000, 192)], 1e-4)

    assert target - 0.1 < spent <= target + EPSILON_TOLERANCE


def test_fedavg_rounds_compose_to_the_target_and_need_more_noise_than_one_round():
    target = NoiseTarget(epsilon=3.0)
    one = training_plan(target, 1e-4, n_train=1000, batch_size=32, epochs=1, rounds=1)
    ten = training_plan(target, 1e-4, n_train=1000, batch_size=32, epochs=1, rounds=10)

    assert ten.noise_multiplier > one.noise_multiplier
    assert ten.sample_rate == pytest.approx(0.032) and ten.steps == 32
    assert epsilon_spent([ten.mechanism] * 10, 1e-4) <= 3.0 + EPSILON_TOLERANCE


def test_a_round_beyond_the_budget_is_refused_at_the_hospital():
    target = NoiseTarget(epsilon=3.0)
    release = training_plan(target, 1e-4, n_train=1000, batch_size=32, epochs=1, rounds=2)
    history = []
    for _ in range(2):
        check_budget(history, release, target, "round")
        history.append(release.mechanism)

    with pytest.raises(ValueError, match=r"beyond this hospital's budget privacy.epsilon=3.0.*strategy.rounds"):
        check_budget(history, release, target, "round 3")


def test_a_fixed_noise_multiplier_is_used_as_given_and_never_refused():
    fixed = plan(NoiseTarget(noise_multiplier=0.3), 1e-5, 0.5, 1000)

    assert fixed.noise_multiplier == 0.3
    assert check_budget([fixed.mechanism] * 5, fixed, NoiseTarget(noise_multiplier=0.3), "x") > 10


def test_a_sampling_rate_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="sampling rate"):
        plan(NoiseTarget(epsilon=1.0), 1e-5, 0.0, 10)

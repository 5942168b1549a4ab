"""Privacy accounting: Opacus's RDP accountant for the subsampled Gaussian mechanism, kept as data.

A hospital's history is a list of Opacus accountant entries (σ, q, steps): one per training round
and one per calibration-set distillation. ε of everything it ever released is the RDP composition
of all of them (Mironov 2017; Mironov, Talwar, Zhang 2019), converted at the hospital's δ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from fl_app.privacy.settings import NoiseTarget

Mechanism = tuple[float, float, int]  # (noise multiplier σ, sample rate q, steps): one accountant entry
EPSILON_TOLERANCE = 0.01  # Opacus's search tolerance: a calibrated σ spends at most target + this


def epsilon_spent(history: Sequence[Mechanism], delta: float) -> float:
    """ε after every mechanism in `history` at `delta` (0 for an empty history)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # here, not at import: only DP runs need Opacus (~0.3 s)

    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, only looser
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


def noise_for_epsilon(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest σ (to Opacus's tolerance) whose `steps` subsampled-Gaussian steps spend at most ε."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=max(int(steps), 1),
                accountant="rdp",
                epsilon_tolerance=EPSILON_TOLERANCE,
            )
        )


@dataclass(frozen=True)
class Plan:
    """The noise a mechanism runs with, and the (q, steps) the accountant is told."""

    noise_multiplier: float
    sample_rate: float
    steps: int  # per release (a training round, or one distillation)
    delta: float

    @property
    def mechanism(self) -> Mechanism:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def plan(target: NoiseTarget, delta: float, sample_rate: float, steps: int, releases: int = 1) -> Plan:
    """σ for `releases` runs of `steps` steps at rate q: calibrated so that all of them together spend
    the target ε (FedAvg's R rounds compose), or the fixed σ."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"the sampling rate {sample_rate} must be in (0, 1].")
    sigma = (
        float(target.noise_multiplier)
        if target.noise_multiplier is not None
        else noise_for_epsilon(float(target.epsilon), delta, sample_rate, steps * max(int(releases), 1))
    )
    return Plan(sigma, sample_rate, int(steps), delta)


def training_plan(target: NoiseTarget, delta: float, n_train: int, batch_size: int, epochs: int, rounds: int) -> Plan:
    """DP-SGD at a hospital: Poisson sampling at q = batch / n, epochs · ⌈n / batch⌉ steps per round."""
    if n_train < 1:
        raise ValueError("DP-SGD needs at least one training image.")
    sample_rate = min(1.0, batch_size / n_train)
    steps = max(1, int(epochs) * math.ceil(1.0 / sample_rate))
    return plan(target, delta, sample_rate, steps, rounds)


def check_budget(
    history: Sequence[Mechanism], next_release: Plan, target: NoiseTarget, what: str, budget: str = "privacy.epsilon"
) -> float:
    """ε after `next_release`; raises when a target ε would be exceeded (a server asking for more
    rounds than the hospital budgeted for is refused here, at the hospital)."""
    after = epsilon_spent([*history, next_release.mechanism], next_release.delta)
    if target.epsilon is not None and after > target.epsilon + 2 * EPSILON_TOLERANCE:
        spent = epsilon_spent(history, next_release.delta)
        raise ValueError(
            f"{what} would spend ε={after:.3f} at δ={next_release.delta:.2g}, beyond this hospital's budget "
            f"{budget}={target.epsilon} (already spent: ε={spent:.3f} over {len(history)} release(s)). "
            f"The hospital refuses; raise {budget} or plan fewer rounds (strategy.rounds)."
        )
    return after

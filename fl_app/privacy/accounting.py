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
EPSILON_TOLERANCE = 0.01  # calibration's search tolerance: a calibrated σ spends between target - this and target
FLOAT_TOLERANCE = 1e-9  # relative: the only slack a budget check allows (float rounding of the same sum)
COUNT_NOISE = (
    20.0  # σ of the Gaussian on a hospital's released training-set size (sensitivity 1: add/remove one record)
)
COUNT_MECHANISM: Mechanism = (COUNT_NOISE, 1.0, 1)  # the noised count as an accountant entry: the Gaussian mechanism


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


def noise_for_epsilon(
    epsilon: float, delta: float, sample_rate: float, steps: int, overhead: Sequence[Mechanism] = ()
) -> float:
    """The smallest σ (to EPSILON_TOLERANCE) whose `steps` subsampled-Gaussian steps, composed with the
    `overhead` releases (e.g. the noised count), spend at most ε: the spend never exceeds the target."""
    steps = max(int(steps), 1)

    def spent(sigma: float) -> float:
        return epsilon_spent([*overhead, (sigma, sample_rate, steps)], delta)

    if epsilon_spent(list(overhead), delta) >= epsilon:
        raise ValueError(f"the fixed releases {list(overhead)} alone spend ε >= {epsilon} at δ={delta:.2g}.")
    low, high = 0.0, 10.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(
                f"no noise multiplier reaches ε={epsilon} at δ={delta:.2g} (q={sample_rate}, {steps} steps)."
            )
    spent_high = spent(high)
    while epsilon - spent_high > EPSILON_TOLERANCE:
        middle = (low + high) / 2
        if (spent_middle := spent(middle)) <= epsilon:
            high, spent_high = middle, spent_middle
        else:
            low = middle
    return float(high)


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


def plan(
    target: NoiseTarget,
    delta: float,
    sample_rate: float,
    steps: int,
    releases: int = 1,
    overhead: Sequence[Mechanism] = (),
) -> Plan:
    """σ for `releases` runs of `steps` steps at rate q: calibrated so that all of them together, with
    the `overhead` releases, spend the target ε (FedAvg's R rounds compose), or the fixed σ."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"the sampling rate {sample_rate} must be in (0, 1].")
    sigma = (
        float(target.noise_multiplier)
        if target.noise_multiplier is not None
        else noise_for_epsilon(float(target.epsilon), delta, sample_rate, steps * max(int(releases), 1), overhead)
    )
    return Plan(sigma, sample_rate, int(steps), delta)


def training_plan(
    target: NoiseTarget,
    delta: float,
    n_train: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    overhead: Sequence[Mechanism] = (),
) -> Plan:
    """DP-SGD at a hospital: Poisson sampling at q = batch / n, epochs · ⌈n / batch⌉ steps per round.

    Under DP `n_train` is the hospital's *released* (noised) count: q and the steps then reveal nothing
    more. Poisson sampling at any q is accounted exactly, whatever the true n."""
    if n_train < 1:
        raise ValueError("DP-SGD needs at least one training image.")
    sample_rate = min(1.0, batch_size / n_train)
    steps = max(1, int(epochs) * math.ceil(1.0 / sample_rate))
    return plan(target, delta, sample_rate, steps, rounds, overhead)


def check_budget(
    history: Sequence[Mechanism], next_release: Plan, target: NoiseTarget, what: str, budget: str = "privacy.epsilon"
) -> float:
    """ε after `next_release`; raises when a target ε would be exceeded (a server asking for more
    rounds than the hospital budgeted for is refused here, at the hospital). No slack beyond float
    rounding: calibration never aims above the target."""
    after = epsilon_spent([*history, next_release.mechanism], next_release.delta)
    if target.epsilon is not None and after > target.epsilon * (1 + FLOAT_TOLERANCE):
        spent = epsilon_spent(history, next_release.delta)
        raise ValueError(
            f"{what} would spend ε={after:.3f} at δ={next_release.delta:.2g}, beyond this hospital's budget "
            f"{budget}={target.epsilon} (already spent: ε={spent:.3f} over {len(history)} release(s)). "
            f"The hospital refuses; raise {budget} or plan fewer rounds (strategy.rounds)."
        )
    return after

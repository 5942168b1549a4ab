"""The `privacy` section: what a hospital promises about its patients, read and checked once.

Differential privacy is applied at the hospital, to everything computed from its training images
that leaves the site: the adapter and head (DP-SGD) and, for MedForge, the distilled calibration
set (noisy class means). `privacy=none` (the default) changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NoiseTarget:
    """Either a target ε (the noise is calibrated to it) or a fixed noise multiplier σ."""

    epsilon: float | None = None
    noise_multiplier: float | None = None

    def check(self, where: str) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                f"{where}: set exactly one of epsilon (a target, e.g. {where}.epsilon=8) or noise_multiplier "
                f"(a fixed σ); got epsilon={self.epsilon}, noise_multiplier={self.noise_multiplier}."
            )
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(
                f"{where}.epsilon={self.epsilon} must be a finite number > 0 (no privacy at all: privacy=none)."
            )
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise ValueError(f"{where}.noise_multiplier={self.noise_multiplier} must be a finite number > 0.")


@dataclass(frozen=True)
class DistillPrivacy:
    """DP distribution matching: each real embedding clipped to `max_norm`, Gaussian noise on the
    per-class sums, every record sampled with probability `sample_rate` per iteration."""

    enabled: bool = False
    target: NoiseTarget = NoiseTarget()
    max_norm: float = 1.0
    sample_rate: float = 0.1


LEDGER_PER_JOB = "job"  # privacy.simulation.ledger: a fresh budget per sweep job (simulation only)


@dataclass(frozen=True)
class SimulatedSite:
    """Settings only a *simulated* hospital honours (a deployed site refuses or ignores them).

    seeded_noise: draw DP noise and Poisson batches from the experiment seed, so a simulation repeats
    exactly; the server then knows every draw, so it is refused wherever a site holds real data.
    ledger: `job` keeps one privacy budget per sweep job (in the node's context state); a folder keeps
    each simulated hospital's ledger there, keyed by its data, as a deployed site does.
    """

    seeded_noise: bool = False
    ledger: str = LEDGER_PER_JOB


@dataclass(frozen=True)
class PrivacySettings:
    enabled: bool = False
    target: NoiseTarget = NoiseTarget()  # training (DP-SGD); ε covers every round of the run
    delta: float | None = None  # None: 1 / (10 · n_train), below the 1/n a DP guarantee needs
    max_grad_norm: float = 1.0  # per-sample clipping bound C
    secagg: bool = False
    distill: DistillPrivacy = DistillPrivacy()
    simulation: SimulatedSite = SimulatedSite()

    def delta_for(self, n_train: int) -> float:
        """The requested δ, or 1 / (10 · n) for the *released* (noised) count n."""
        return float(self.delta) if self.delta is not None else default_delta(n_train)


DEFAULT_DELTA_MIN_COUNT = 60  # 3x the released count's noise σ (20): δ's default never exceeds 1 / 600


def default_delta(n_train: int) -> float:
    """1 / (10 · n) of the released (noised) count, n taken as at least `DEFAULT_DELTA_MIN_COUNT`: a tiny
    site's noised count can land far below its true n (σ 20), and δ must stay below 1 / (true n)."""
    return 1.0 / (10.0 * max(int(n_train), DEFAULT_DELTA_MIN_COUNT))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def privacy_settings(section: Mapping[str, Any] | None) -> PrivacySettings:
    """The experiment's `privacy` section (absent in runs made before it existed: no privacy)."""
    if not section or not section.get("enabled", False):
        return PrivacySettings(secagg=bool((section or {}).get("secagg", False)))
    distill = dict(section.get("distill") or {})
    simulated = dict(section.get("simulation") or {})
    return PrivacySettings(
        enabled=True,
        target=NoiseTarget(_float_or_none(section.get("epsilon")), _float_or_none(section.get("noise_multiplier"))),
        delta=_float_or_none(section.get("delta")),
        max_grad_norm=float(section.get("max_grad_norm", 1.0)),
        secagg=bool(section.get("secagg", False)),
        distill=DistillPrivacy(
            enabled=bool(distill.get("enabled", False)),
            target=NoiseTarget(_float_or_none(distill.get("epsilon")), _float_or_none(distill.get("noise_multiplier"))),
            max_norm=float(distill.get("max_norm", 1.0)),
            sample_rate=float(distill.get("sample_rate", 0.1)),
        ),
        simulation=SimulatedSite(
            seeded_noise=bool(simulated.get("seeded_noise", False)),
            ledger=str(simulated.get("ledger") or LEDGER_PER_JOB),
        ),
    )


SECAGG_UNAVAILABLE = (
    "privacy.secagg=true: Flower 1.42 offers SecAgg+ only through its legacy API (NumPyClient + secaggplus_mod "
    "on the client, SecAggPlusWorkflow in a legacy ServerApp); the Message API strategies MedForge uses have no "
    "secure aggregation (https://flower.ai/docs/framework/how-to-use-secure-aggregation.html). "
    "Run without it (privacy.secagg=false); README 'Privacy' says what the server sees."
)


def validate_privacy(privacy_section: Mapping[str, Any] | None, train: Mapping[str, Any]) -> None:
    """Raise ValueError naming the key and the fix for a privacy setting that cannot be honoured."""
    settings = privacy_settings(privacy_section)
    if settings.secagg:
        raise ValueError(SECAGG_UNAVAILABLE)
    if not settings.enabled:
        return
    settings.target.check("privacy")
    if not (math.isfinite(settings.max_grad_norm) and settings.max_grad_norm > 0):
        raise ValueError(f"privacy.max_grad_norm={settings.max_grad_norm} must be a finite number > 0.")
    if settings.delta is not None and not 0 < settings.delta < 1:
        raise ValueError(f"privacy.delta={settings.delta} must be in (0, 1); null = 1 / (10 · n_train).")
    if bool(train.get("early_stopping", False)):
        raise ValueError(
            "train.early_stopping=true picks the epoch on the hospital's validation patients, which the DP "
            "accountant does not cover; set train.early_stopping=false (privacy=dp does)."
        )
    if str(train.get("class_weighting", "none")) != "none":
        raise ValueError(
            f"train.class_weighting={train.get('class_weighting')!r} weights the loss by the training split's label "
            "counts, which the DP accountant does not cover; set train.class_weighting=none (privacy=dp does)."
        )
    simulated = dict((privacy_section or {}).get("simulation") or {})
    if not isinstance(simulated.get("seeded_noise", False), bool):
        raise ValueError(
            f"privacy.simulation.seeded_noise={simulated.get('seeded_noise')!r} must be true or false "
            "(false: noise only the hospital knows; true: repeatable simulations, refused at a real site)."
        )
    if settings.distill.enabled:
        settings.distill.target.check("privacy.distill")
        if not (math.isfinite(settings.distill.max_norm) and settings.distill.max_norm > 0):
            raise ValueError(f"privacy.distill.max_norm={settings.distill.max_norm} must be a finite number > 0.")
        if not 0 < settings.distill.sample_rate <= 1:
            raise ValueError(f"privacy.distill.sample_rate={settings.distill.sample_rate} must be in (0, 1].")


def refuse_plain_calibration(settings: PrivacySettings) -> None:
    """With privacy on, a calibration set is sent only if it was distilled under DP."""
    if settings.enabled and not settings.distill.enabled:
        raise ValueError(
            "privacy is on but privacy.distill.enabled=false: the calibration set would be distilled from the "
            "hospital's patients without differential privacy, so it is not sent. Set privacy.distill.enabled=true "
            "(DP distribution matching), or use a data-free merge (strategy=one_shot)."
        )


def refuse_below_site_budget(settings: PrivacySettings, site_epsilon: float | None) -> None:
    """A site whose node config sets `privacy-epsilon` trains only under DP, whatever the server sends."""
    if site_epsilon is not None and not settings.enabled:
        raise ValueError(
            f"this site's node config sets privacy-epsilon={site_epsilon:g}, but the server asked to train without "
            "differential privacy; the hospital refuses. Run the experiment with privacy=dp."
        )

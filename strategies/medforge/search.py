"""Gradient-free search of merge coefficients on calibration sets (MedForge, Sec. 3.3).

nevergrad's NGOpt as in the paper: coefficients start at `init` inside [lower, upper]; the
objective is the calibration loss plus `l1` times the mean absolute coefficient. Seeded, so a
run repeats exactly. The best point evaluated is returned (never worse than the start).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nevergrad as ng
import numpy as np


@dataclass(frozen=True)
class SearchSettings:
    optimizer: str = "NGOpt"
    budget: int = 40
    lower: float = -1.5
    upper: float = 1.5
    init: float = 0.5
    l1: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ng.optimizers.registry:
            raise ValueError(
                f"strategy.search.optimizer={self.optimizer!r} is not a nevergrad optimizer; e.g. NGOpt, CMA, OnePlusOne, RandomSearch."
            )
        if self.budget < 1:
            raise ValueError(f"strategy.search.budget={self.budget} must be >= 1.")
        if not self.lower < self.upper:
            raise ValueError(f"strategy.search bounds [{self.lower}, {self.upper}] are empty; lower must be < upper.")


@dataclass(frozen=True)
class SearchResult:
    coefficients: list[float]
    objective: float  # loss + l1 · mean|w| at `coefficients`
    loss: float  # the calibration loss alone
    start_objective: float  # at the starting point
    evaluations: int


def objective(loss: float, coefficients: np.ndarray, l1: float) -> float:
    """The searched quantity: calibration loss + l1 · mean |w| (MedForge's regulariser)."""
    return float(loss + l1 * np.abs(coefficients).mean())


def search_coefficients(
    loss_fn: Callable[[np.ndarray], float], n: int, settings: SearchSettings, start: Sequence[float] | None = None
) -> SearchResult:
    """Minimise `objective(loss_fn(w), w)` over n coefficients within the bounds."""
    initial = np.clip(
        np.full(n, settings.init, dtype=float) if start is None else np.asarray(start, dtype=float),
        settings.lower,
        settings.upper,
    )
    parametrization = ng.p.Array(init=initial, lower=settings.lower, upper=settings.upper)
    parametrization.random_state = np.random.RandomState(settings.seed)
    optimizer = ng.optimizers.registry[settings.optimizer](
        parametrization=parametrization, budget=settings.budget, num_workers=1
    )
    optimizer.suggest(initial)  # the first point asked is the start
    best: tuple[float, float, np.ndarray] | None = None
    start_objective = None
    with warnings.catch_warnings():  # NGOpt's COBYLA stage warns about its own tolerance defaults
        warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
        for _ in range(settings.budget):
            candidate = optimizer.ask()
            w = np.asarray(candidate.value, dtype=float)
            loss = float(loss_fn(w))
            value = objective(loss, w, settings.l1) if np.isfinite(loss) else float("inf")
            optimizer.tell(candidate, value)
            start_objective = value if start_objective is None else start_objective
            if best is None or value < best[0]:
                best = (value, loss, w.copy())
    value, loss, w = best
    return SearchResult([float(x) for x in w], value, loss, float(start_objective), settings.budget)

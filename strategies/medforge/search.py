"""Gradient-free search of merge coefficients (MedForge, Sec. 3.3), in a chosen geometry.

nevergrad's NGOpt as in the paper. The searched vector x maps to coefficients w by the geometry:

- `box` (the paper): w = x, each in [lower, upper], the sum free (six hospitals at 0.85 each
  amplify the merged update 5x: nothing in the objective forbids it);
- `convex`: w = softmax(x), non-negative and summing to one (a weighted average of the adapters);
- `affine`: w = x shifted to sum to one (negative weights allowed, the scale fixed).

The objective is the loss plus `l1` times the mean |w - reference|, the reference being zero (the
paper's L1) or the start (`l1_from: start`: stay near the data-free weights unless the loss says
otherwise). The first point evaluated is the start and the best point evaluated is returned, so
the result is never worse than the start by the searched objective. Candidates are asked and scored
`batch` at a time (a federated search scores a batch in one message round). Seeded: a run repeats.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import nevergrad as ng
import numpy as np

Geometry = Literal["box", "convex", "affine"]
GEOMETRIES: tuple[str, ...] = get_args(Geometry)
L1From = Literal["zero", "start"]
L1_FROM: tuple[str, ...] = get_args(L1From)
Start = Literal["paper", "data_free"]
STARTS: tuple[str, ...] = get_args(Start)
SEQUENTIAL_ONLY = ("NGOpt",)  # optimizers that crash with num_workers > 1 (nevergrad 1.0 + NumPy 2)
SOFTMAX_BOUND = 6.0  # convex: logits in [-6, 6], so a weight can reach e^-12 of another (about zero)

BatchLoss = Callable[[list[np.ndarray]], list[float]]  # coefficient vectors -> their losses


@dataclass(frozen=True)
class SearchSettings:
    optimizer: str = "NGOpt"
    budget: int = 40
    lower: float = -1.5
    upper: float = 1.5
    init: float = 0.5
    l1: float = 0.05
    seed: int = 0
    geometry: Geometry = "box"
    start: Start = "paper"  # paper: every w = init (box) or uniform (convex, affine); data_free: the baseline's weights
    l1_from: L1From = "zero"
    source: Literal["calibration", "federated"] = "calibration"

    def __post_init__(self) -> None:
        if self.optimizer not in ng.optimizers.registry:
            raise ValueError(
                f"strategy.search.optimizer={self.optimizer!r} is not a nevergrad optimizer; e.g. NGOpt, CMA, OnePlusOne, RandomSearch."
            )
        if self.budget < 1:
            raise ValueError(f"strategy.search.budget={self.budget} must be >= 1.")
        if not self.lower < self.upper:
            raise ValueError(f"strategy.search bounds [{self.lower}, {self.upper}] are empty; lower must be < upper.")
        for key, value, choices in (
            ("geometry", self.geometry, GEOMETRIES),
            ("start", self.start, STARTS),
            ("l1_from", self.l1_from, L1_FROM),
            ("source", self.source, ("calibration", "federated")),
        ):
            if value not in choices:
                raise ValueError(f"strategy.search.{key}={value!r} is not valid; choose one of {choices}.")
        if self.l1 < 0:
            raise ValueError(f"strategy.search.l1={self.l1} must be >= 0.")


@dataclass(frozen=True)
class SearchResult:
    coefficients: list[float]
    objective: float  # loss + l1 · mean|w - reference| at `coefficients`
    loss: float  # the loss alone
    start_objective: float  # at the starting point
    evaluations: int
    start: list[float] | None = None  # the starting coefficients
    trace: tuple[tuple[tuple[float, ...], float], ...] = ()  # every (w, loss) evaluated, in order


def objective(loss: float, coefficients: np.ndarray, l1: float, reference: np.ndarray | float = 0.0) -> float:
    """The searched quantity: loss + l1 · mean |w - reference| (MedForge's regulariser; reference 0 in the paper)."""
    return float(loss + l1 * np.abs(np.asarray(coefficients) - reference).mean())


def to_coefficients(x: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The searched vector -> merge coefficients in `geometry`."""
    x = np.asarray(x, dtype=float)
    if geometry == "convex":
        z = np.exp(x - x.max())
        return z / z.sum()
    if geometry == "affine":
        return x - (x.sum() - 1.0) / len(x)
    return x


def from_coefficients(w: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A searched vector whose coefficients are `w` (normalised onto the geometry first)."""
    w = np.asarray(w, dtype=float)
    if geometry == "convex":
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"a convex start needs non-negative weights with a positive sum, got {w.tolist()}")
        return np.clip(np.log(np.maximum(w / w.sum(), 1e-12)), -SOFTMAX_BOUND, SOFTMAX_BOUND)
    if geometry == "affine":
        return w - (w.sum() - 1.0) / len(w)
    return w


def search_bounds(settings: SearchSettings) -> tuple[float, float]:
    return (-SOFTMAX_BOUND, SOFTMAX_BOUND) if settings.geometry == "convex" else (settings.lower, settings.upper)


def default_start(n: int, settings: SearchSettings) -> np.ndarray:
    """The paper's start: every coefficient at `init` (box); uniform weights where the sum is fixed."""
    return np.full(n, settings.init if settings.geometry == "box" else 1.0 / n, dtype=float)


def search_coefficients(
    loss_fn: Callable[[np.ndarray], float] | None,
    n: int,
    settings: SearchSettings,
    start: Sequence[float] | None = None,
    *,
    batch_loss: BatchLoss | None = None,
    batch: int = 1,
) -> SearchResult:
    """Minimise `objective(loss(w), w)` over n coefficients in the settings' geometry.

    Pass `loss_fn` (one w at a time) or `batch_loss` (up to `batch` coefficient vectors at once).
    """
    if (loss_fn is None) == (batch_loss is None):
        raise ValueError("pass exactly one of loss_fn and batch_loss")
    score = batch_loss or (lambda ws: [float(loss_fn(w)) for w in ws])
    batch = max(1, min(int(batch), settings.budget))
    if batch > 1 and settings.optimizer in SEQUENTIAL_ONLY:
        raise ValueError(
            f"strategy.search.optimizer={settings.optimizer} fails when asked for {batch} candidates at once "
            "(nevergrad 1.0's metamodel stage breaks on NumPy 2); use CMA (or DE, TwoPointsDE), or "
            "strategy.federated.candidates_per_round=1."
        )
    lower, upper = search_bounds(settings)
    start_w = default_start(n, settings) if start is None else np.asarray(start, dtype=float)
    initial = np.clip(from_coefficients(start_w, settings.geometry), lower, upper)
    start_w = to_coefficients(initial, settings.geometry)
    reference = start_w if settings.l1_from == "start" else 0.0
    parametrization = ng.p.Array(init=initial, lower=lower, upper=upper)
    parametrization.random_state = np.random.RandomState(settings.seed)
    optimizer = ng.optimizers.registry[settings.optimizer](
        parametrization=parametrization, budget=settings.budget, num_workers=batch
    )
    optimizer.suggest(initial)  # the first point asked is the start
    best: tuple[float, float, np.ndarray] | None = None
    start_objective = None
    trace: list[tuple[tuple[float, ...], float]] = []
    asked = 0
    with warnings.catch_warnings():  # NGOpt's COBYLA stage warns about its own tolerance defaults
        warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
        while asked < settings.budget:
            candidates = [optimizer.ask() for _ in range(min(batch, settings.budget - asked))]
            asked += len(candidates)
            ws = [to_coefficients(np.asarray(c.value, dtype=float), settings.geometry) for c in candidates]
            losses = score(ws)
            for candidate, w, loss in zip(candidates, ws, losses):
                loss = float(loss)
                value = objective(loss, w, settings.l1, reference) if np.isfinite(loss) else float("inf")
                optimizer.tell(candidate, value)
                trace.append((tuple(float(x) for x in w), loss))
                start_objective = value if start_objective is None else start_objective
                if best is None or value < best[0]:
                    best = (value, loss, w.copy())
    value, loss, w = best
    return SearchResult(
        [float(x) for x in w],
        value,
        loss,
        float(start_objective),
        settings.budget,
        [float(x) for x in start_w],
        tuple(trace),
    )

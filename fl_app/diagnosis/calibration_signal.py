"""How much signal a calibration set carries, measured two ways on a stored run's hospitals.

1. Head fit: a task head (logistic regression on the frozen backbone's pooled features, balanced
   classes) fitted on the set alone and scored on the real test split. Compared with the same
   number of real training images drawn at random, with pure noise, and with real sets of growing
   size, so a distilled set can be read as "worth N real images".
2. Search: MedForge's coefficient search (the paper's setting) run on the set and, for every point
   it evaluates, the real validation loss of the same merge: does the objective track reality?
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fl_app.calibration import CalibrationSet, DistillSettings
from fl_app.diagnosis.scoring import InProcessScorer
from fl_app.diagnosis.variants import fused
from fl_app.hospital_steps import Hospital
from fl_app.training import medmnist_metrics, unit_images
from strategies.medforge.search import SearchSettings, search_coefficients

SOURCES = ("distilled", "real", "noise")


def real_set(site: Hospital, per_class: int, seed: int) -> CalibrationSet:
    """`per_class` random training images of each class present (fewer where a class has fewer)."""
    rng = np.random.default_rng(seed)
    labels = site.data.train.labels[:, 0]
    picks = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
            for c in np.unique(labels)
        ]
    )
    return CalibrationSet(
        site.task, site.data.train.images[picks], site.data.train.labels[picks], "real", np.nan, np.nan, 0.0
    )


def noise_set(site: Hospital, per_class: int, seed: int) -> CalibrationSet:
    """Uniform noise images with the class labels a set of `per_class` per class would have."""
    classes = np.unique(site.data.train.labels[:, 0])
    shape = site.data.train.images.shape[1:]
    images = np.random.default_rng(seed).integers(0, 256, size=(per_class * len(classes), *shape), dtype=np.uint8)
    labels = np.repeat(classes, per_class)[:, None].astype(np.int64)
    return CalibrationSet(site.task, images, labels, "noise", np.nan, np.nan, 0.0)


@torch.no_grad()
def frozen_features(site: Hospital, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Pooled features of the pretrained backbone (no LoRA) for uint8 images."""
    with site.model.peft.disable_adapter():
        parts = [site.frozen_embedding(unit_images(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat(parts).numpy()


def head_fit_scores(site: Hospital, calibration: CalibrationSet, test_features: np.ndarray) -> dict[str, float]:
    """Test AUC/ACC of a head fitted on the set's frozen features alone."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - the diagnosis only; hospitals never import it

    features = frozen_features(site, calibration.images)
    labels = calibration.labels[:, 0]
    if len(np.unique(labels)) < 2:
        return {"auc": float("nan"), "acc": float("nan")}
    head = LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0).fit(features, labels)
    probabilities = np.zeros((len(test_features), site.data.task.n_outputs))
    probabilities[:, head.classes_] = head.predict_proba(test_features)
    return medmnist_metrics(site.data.task, site.data.test.labels, probabilities)


def head_fit_table(
    scorer: InProcessScorer,
    settings: Sequence[DistillSettings],
    real_per_class: Sequence[int] = (1, 2, 5, 10, 20, 50),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per task: the head-fit test AUC of each distilled setting, of noise, and of random real sets."""
    rows = []
    for site in scorer.sites:
        test_features = frozen_features(site, site.data.test.images)
        for setting in settings:
            distilled = site.calibration_set(setting)
            rows.append(
                {
                    "task": site.task,
                    "source": "distilled",
                    "ipc": setting.ipc,
                    "iterations": setting.iterations,
                    "seconds": distilled.seconds,
                    **head_fit_scores(site, distilled, test_features),
                }
            )
        for ipc in sorted({s.ipc for s in settings}):
            rows.append(
                {
                    "task": site.task,
                    "source": "noise",
                    "ipc": ipc,
                    **head_fit_scores(site, noise_set(site, ipc, seed), test_features),
                }
            )
        for n in real_per_class:
            scores = [head_fit_scores(site, real_set(site, n, seed + k), test_features) for k in range(3)]
            rows.append(
                {
                    "task": site.task,
                    "source": "real",
                    "ipc": n,
                    "auc": float(np.nanmean([s["auc"] for s in scores])),
                    "acc": float(np.nanmean([s["acc"] for s in scores])),
                }
            )
    return rows


def worth_in_real_images(rows: Sequence[dict[str, Any]], task: str, auc: float) -> float:
    """How many real images per class give the same head-fit AUC (linear between measured sizes)."""
    real = sorted((r["ipc"], r["auc"]) for r in rows if r["task"] == task and r["source"] == "real")
    if auc <= real[0][1]:
        return float(real[0][0]) * max(auc, 0.0) / max(real[0][1], 1e-9)
    for (n0, a0), (n1, a1) in zip(real, real[1:]):
        if a0 <= auc <= a1:
            return float(n0 + (n1 - n0) * (auc - a0) / max(a1 - a0, 1e-9))
    return float(real[-1][0])


def calibration_search(
    scorer: InProcessScorer, sets: Sequence[CalibrationSet], settings: SearchSettings, budget_points: bool = True
) -> dict[str, Any]:
    """The paper's Fusion search on `sets` (one per hospital, same order as the scorer), each point
    evaluated also on the real validation splits; the result's merge scored on test for the report."""
    from strategies.medforge.scoring import CalibrationScorer  # noqa: PLC0415

    hospitals = scorer.stored
    calibration = CalibrationScorer(scorer.sites[0].experiment)
    for h, s in zip(hospitals, sets):
        calibration.add(h.id, s)
    ids = [h.id for h in hospitals]

    def loss(w):
        state, rank, alpha = fused(hospitals, w)
        return calibration.cross_entropy(calibration.logits(state, rank, alpha, ids))

    result = search_coefficients(loss, len(hospitals), settings)
    points = []
    for w, calibration_loss in result.trace if budget_points else []:
        val = scorer.score(scorer.probabilities(*fused(hospitals, w), "val"), "val")
        points.append(
            {"coefficients": list(w), "calibration_loss": calibration_loss, "val_loss": val.loss, "val_auc": val.auc}
        )
    state = fused(hospitals, result.coefficients)
    test = scorer.score(scorer.probabilities(*state, "test"), "test")
    val = scorer.score(scorer.probabilities(*state, "val"), "val")
    pairs = np.array([[p["calibration_loss"], p["val_loss"]] for p in points])
    correlation = float(np.corrcoef(pairs.T)[0, 1]) if len(points) > 2 and pairs[:, 0].std() > 0 else float("nan")
    return {
        "coefficients": result.coefficients,
        "test_auc": test.auc,
        "test_acc": test.acc,
        "val_auc": val.auc,
        "val_loss": val.loss,
        "correlation": correlation,
        "spearman": _spearman(pairs) if len(points) > 2 else float("nan"),
        "points": points,
    }


def _spearman(pairs: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(pairs, axis=0), axis=0).astype(float)
    return float(np.corrcoef(ranks.T)[0, 1]) if ranks[:, 0].std() > 0 and ranks[:, 1].std() > 0 else float("nan")


def search_sources(
    scorer: InProcessScorer, distill: DistillSettings, settings: SearchSettings, seed: int
) -> dict[str, Any]:
    """The paper's search run on distilled sets, on as many random real images, and on noise."""
    per_class = distill.ipc
    sources = {
        "distilled": [site.calibration_set(distill) for site in scorer.sites],
        "real": [real_set(site, per_class, seed) for site in scorer.sites],
        "noise": [noise_set(site, per_class, seed) for site in scorer.sites],
    }
    return {name: calibration_search(scorer, sets, settings) for name, sets in sources.items()}

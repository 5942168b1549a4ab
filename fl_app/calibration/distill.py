"""A hospital's calibration set: `ipc` synthetic images per class distilled by distribution matching.

Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023),
as MedForge uses it (Tan et al. 2025, Sec. 3.2): optimise synthetic pixels so that, under the frozen
backbone and the same differentiable augmentation, each class's mean embedding matches the real
one. Initialised from noise by default: no real image leaves the hospital. Initialising from real
images is an explicit opt-in, recorded as a privacy risk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fl_app.calibration.augment import augment, sample_augment
from fl_app.calibration.dp_means import clip_rows, noisy_class_means
from fl_app.data import SplitArrays, TaskInfo
from fl_app.training import unit_images

Embed = Callable[[torch.Tensor], torch.Tensor]  # images (N, C, H, W) in [0, 1] -> embeddings (N, D)
INITS = ("noise", "real")


@dataclass(frozen=True)
class DistillSettings:
    ipc: int = 10  # synthetic images per class
    iterations: int = 100
    lr: float = 0.05  # Adam on the pixels, in [0, 1] units
    batch_real: int = 32  # real images per class per step
    init: Literal["noise", "real"] = "noise"
    augment: bool = True


@dataclass(frozen=True)
class PrivateMeans:
    """DP access to the real data (fl_app.calibration.dp_means): Poisson rate, clip norm, noise multiplier."""

    sample_rate: float
    max_norm: float
    noise_multiplier: float


@dataclass(frozen=True)
class CalibrationSet:
    """Distilled images in MedMNIST layout (uint8 (N,H,W[,3]), labels (N,1)) and how they were made."""

    task: str
    images: np.ndarray
    labels: np.ndarray
    init: str
    loss_before: float  # matching loss of the initial images (no augmentation); NaN under DP (it reads real data)
    loss_after: float
    seconds: float
    epsilon: float = math.nan  # DP distillation: ε of this set alone (NaN: not private)

    @property
    def split(self) -> SplitArrays:
        return SplitArrays(self.images, self.labels)

    @property
    def privacy_risk(self) -> bool:
        """Real-image initialisation can leave recognisable patient images in the set."""
        return self.init == "real"


def class_indices(labels: np.ndarray, n_classes: int) -> dict[int, np.ndarray]:
    """Indices of each class present in `labels` (N, 1); absent classes are left out."""
    flat = labels[:, 0]
    return {c: np.flatnonzero(flat == c) for c in range(n_classes) if (flat == c).any()}


def matching_loss(embed: Embed, real: dict[int, torch.Tensor], synthetic: dict[int, torch.Tensor]) -> torch.Tensor:
    """Σ over classes of ||mean embedding(real) − mean embedding(synthetic)||² (the DM objective)."""
    with torch.no_grad():
        targets = {c: embed(real[c]).mean(dim=0) for c in synthetic}
    return matching_loss_to(embed, targets, synthetic)


def matching_loss_to(
    embed: Embed, targets: dict[int, torch.Tensor], synthetic: dict[int, torch.Tensor]
) -> torch.Tensor:
    """The DM objective against given per-class target means (real ones, or DP noisy ones)."""
    loss = torch.zeros(())
    for c, images in synthetic.items():
        loss = loss + ((targets[c] - embed(images).mean(dim=0)) ** 2).sum()
    return loss


def _initial_images(
    train: SplitArrays, indices: dict[int, np.ndarray], settings: DistillSettings, generator: torch.Generator
) -> dict[int, torch.Tensor]:
    shape = unit_images(train.images[:1]).shape[1:]
    if settings.init == "noise":
        return {c: torch.rand((settings.ipc, *shape), generator=generator) for c in indices}
    picks = {
        c: idx[torch.randint(len(idx), (settings.ipc,), generator=generator).numpy()] for c, idx in indices.items()
    }
    return {c: unit_images(train.images[p]) for c, p in picks.items()}


def distill_calibration_set(
    embed: Embed,
    task: TaskInfo,
    train: SplitArrays,
    settings: DistillSettings,
    seed: int,
    private: PrivateMeans | None = None,
) -> CalibrationSet:
    """Distil `train` into `settings.ipc` images per class present; reproducible for a seed.

    With `private`, real images are read only through DP class means (every class of the task gets
    images, present or not; no loss against real data is reported): the set is DP by post-processing.
    """
    if task.multi_label:
        raise ValueError(
            f"task {task.name!r} is multi-label: distribution matching needs one class per image. "
            "Use a MedForge merge on single-label tasks, or a data-free merge (strategy=one_shot) for this task."
        )
    if settings.init not in INITS:
        raise ValueError(f"strategy.calibration.init={settings.init!r} is not valid; choose one of {INITS}.")
    if settings.ipc < 1 or settings.iterations < 0:
        raise ValueError(
            f"strategy.calibration needs ipc >= 1 and iterations >= 0, got ipc={settings.ipc}, iterations={settings.iterations}."
        )
    if private is not None and settings.init != "noise":
        raise ValueError(
            "strategy.calibration.init='real' copies patient images into the set, which DP cannot cover; "
            "use init=noise with privacy.distill.enabled=true."
        )
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    indices = class_indices(train.labels, task.n_outputs)
    if private is not None:  # every class, present or not: presence is not revealed
        indices = {c: indices.get(c, np.zeros(0, dtype=np.int64)) for c in range(task.n_outputs)}
    synthetic = {
        c: images.clone().requires_grad_(True)
        for c, images in _initial_images(train, indices, settings, generator).items()
    }
    reference = {c: unit_images(train.images[idx[:256]]) for c, idx in indices.items()} if private is None else {}
    loss_before = (
        float(matching_loss(embed, reference, {c: s.detach() for c, s in synthetic.items()}))
        if private is None
        else math.nan
    )
    optimizer = torch.optim.Adam(list(synthetic.values()), lr=settings.lr)
    labels = torch.from_numpy(train.labels[:, 0].astype(np.int64))
    for _ in range(settings.iterations):
        params = sample_augment(generator) if settings.augment else None
        views = {c: augment(s, params) for c, s in synthetic.items()} if params is not None else synthetic
        if private is None:
            real_batches = {}
            for c, idx in indices.items():
                pick = idx[torch.randperm(len(idx), generator=generator)[: settings.batch_real].numpy()]
                real_batches[c] = unit_images(train.images[pick])
            if params is not None:  # Siamese: the same transform on both sides
                real_batches = {c: augment(images, params) for c, images in real_batches.items()}
            loss = matching_loss(embed, real_batches, views)
        else:
            targets = _private_targets(embed, train, labels, task, private, params, generator, noise)
            # the synthetic side is clipped like the real one: both means live in the same ball
            loss = matching_loss_to(lambda images: clip_rows(embed(images), private.max_norm), targets, views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for s in synthetic.values():
                s.clamp_(0.0, 1.0)
    final = {c: quantised(s.detach()) for c, s in synthetic.items()}
    loss_after = float(matching_loss(embed, reference, final)) if private is None else math.nan
    images = torch.cat([final[c] for c in sorted(final)])
    labels = np.concatenate([np.full((settings.ipc, 1), c, dtype=np.int64) for c in sorted(final)])
    return CalibrationSet(
        task.name,
        to_uint8_layout(images),
        labels,
        settings.init,
        loss_before,
        loss_after,
        time.perf_counter() - started,
    )


def _private_targets(
    embed: Embed,
    train: SplitArrays,
    labels: torch.Tensor,
    task: TaskInfo,
    private: PrivateMeans,
    params,
    generator: torch.Generator,
    noise: torch.Generator,
) -> dict[int, torch.Tensor]:
    """One DP read of the real data: a Poisson sample, augmented like the synthetic views, embedded, noisy means."""
    pick = torch.nonzero(torch.rand(len(train), generator=generator) < private.sample_rate).flatten()
    real = unit_images(train.images[pick.numpy()])
    if params is not None and len(real):
        real = augment(real, params)
    with torch.no_grad():
        # an empty sample still releases pure noise, of the embedding's width
        embeddings = embed(real) if len(real) else embed(unit_images(train.images[:1]))[:0]
    return noisy_class_means(
        embeddings, labels[pick], task.n_outputs, private.max_norm, private.noise_multiplier, noise
    )


def quantised(unit: torch.Tensor) -> torch.Tensor:
    """What survives the trip as uint8: the loss reported is the loss of the images actually sent."""
    return torch.round(unit.clamp(0, 1) * 255) / 255


def to_uint8_layout(unit: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> uint8 (N, H, W) or (N, H, W, 3), the MedMNIST layout."""
    pixels = torch.round(unit.clamp(0, 1) * 255).to(torch.uint8)
    return (pixels[:, 0] if pixels.shape[1] == 1 else pixels.permute(0, 2, 3, 1)).numpy()

"""DP distribution matching: clipped embeddings, noisy class sums, every class released, nothing else read."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_app.calibration import DistillSettings, distill_calibration_set
from fl_app.calibration.distill import PrivateMeans
from fl_app.calibration.dp_means import clip_rows, noisy_class_means
from fl_app.data import SplitArrays
from fl_app.data.tasks import TaskInfo


def test_clipping_bounds_every_row_and_keeps_short_rows():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])

    clipped = clip_rows(rows, 1.0)

    assert torch.allclose(clipped.norm(dim=1), torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(clipped[0], torch.tensor([0.6, 0.8]))


def test_without_noise_the_means_are_the_clipped_class_means_and_absent_classes_are_released():
    embeddings = torch.tensor([[0.2, 0.0], [0.0, 0.4], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1])

    means = noisy_class_means(embeddings, labels, 3, 1.0, 0.0, torch.Generator().manual_seed(0))

    assert set(means) == {0, 1, 2}
    assert torch.allclose(means[0], torch.tensor([0.1, 0.2]))
    assert torch.allclose(means[1], torch.tensor([1.0, 0.0]))  # clipped to C before averaging
    assert torch.equal(means[2], torch.zeros(2))  # no record: sum 0, count floored at 1


def test_noise_has_the_sensitivity_scale_and_is_seeded():
    embeddings, labels = torch.zeros((1000, 4)), torch.zeros(1000, dtype=torch.long)
    draws = [
        noisy_class_means(embeddings, labels, 1, 2.0, 3.0, torch.Generator().manual_seed(s))[0] for s in range(400)
    ]
    # the mean is (noise on the sum) / (noisy count ≈ 1000): std σ·√2·C / 1000
    spread = torch.stack(draws).std().item()

    assert spread == pytest.approx(3.0 * math.sqrt(2) * 2.0 / 1000, rel=0.15)
    again = noisy_class_means(embeddings, labels, 1, 2.0, 3.0, torch.Generator().manual_seed(0))[0]
    assert torch.equal(draws[0], again)


def _task_and_split(n_per_class: int = 40):
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [rng.integers(0, 80, (n_per_class, 8, 8)), rng.integers(170, 255, (n_per_class, 8, 8))]
    ).astype(np.uint8)
    labels = np.concatenate([np.zeros((n_per_class, 1)), np.ones((n_per_class, 1))]).astype(np.int64)
    task = TaskInfo("toy", "multi-class", 3, 1, ("dark", "bright", "absent"))  # class 2 absent
    return task, SplitArrays(images, labels)


def _embed(unit: torch.Tensor) -> torch.Tensor:
    return torch.stack([unit.mean(dim=(1, 2, 3)), unit.std(dim=(1, 2, 3))], dim=1)


def test_private_distillation_releases_every_class_reports_no_real_loss_and_learns_the_classes():
    task, train = _task_and_split()
    settings = DistillSettings(ipc=2, iterations=60, lr=0.05, augment=False)

    private = distill_calibration_set(_embed, task, train, settings, 0, PrivateMeans(0.5, 1.0, 0.5))
    again = distill_calibration_set(_embed, task, train, settings, 0, PrivateMeans(0.5, 1.0, 0.5))

    assert sorted(set(private.labels[:, 0].tolist())) == [0, 1, 2]  # class presence is not revealed
    assert math.isnan(private.loss_before) and math.isnan(private.loss_after)
    assert np.array_equal(private.images, again.images)
    dark, bright = private.images[private.labels[:, 0] == 0], private.images[private.labels[:, 0] == 1]
    assert dark.mean() < bright.mean()  # the noisy means still carry the classes' brightness


def test_more_noise_changes_the_set():
    task, train = _task_and_split()
    settings = DistillSettings(ipc=2, iterations=20, augment=False)

    quiet = distill_calibration_set(_embed, task, train, settings, 0, PrivateMeans(0.5, 1.0, 0.01))
    noisy = distill_calibration_set(_embed, task, train, settings, 0, PrivateMeans(0.5, 1.0, 20.0))

    assert not np.array_equal(quiet.images, noisy.images)


def test_private_distillation_refuses_real_image_initialisation():
    task, train = _task_and_split()

    with pytest.raises(ValueError, match="init='real'.*DP cannot cover"):
        distill_calibration_set(_embed, task, train, DistillSettings(init="real"), 0, PrivateMeans(0.5, 1.0, 1.0))

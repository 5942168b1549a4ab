"""Calibration sets: distribution matching lowers the matching loss and sends no real image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fl_app.calibration import DistillSettings, calibration_records, decode_calibration, distill_calibration_set
from fl_app.calibration.augment import augment, sample_augment
from fl_app.config import hospital_payload
from fl_app.data import SplitArrays, task_info
from fl_app.hospital_steps import simulated_hospital

FAST = DistillSettings(ipc=4, iterations=30, lr=0.01, batch_real=32)


@pytest.fixture(scope="module")
def breast_hospital(request):
    from fl_app.config import compose_experiment
    from tests.conftest import TINY

    cfg = compose_experiment(
        [
            *TINY,
            "data.root=/nonexistent/medforge-test",
            "data.flags=[breastmnist,bloodmnist]",
            "simulation.num_hospitals=2",
        ]
    )
    hospital = simulated_hospital(json.loads(hospital_payload(cfg)), 1, 2)  # bloodmnist: 8 classes, RGB
    hospital.model.use_adapter(hospital.experiment["lora"])
    return hospital


def test_distillation_lowers_the_matching_loss_and_keeps_the_data_layout(breast_hospital):
    calibration = breast_hospital.calibration_set(FAST)
    assert calibration.loss_after < 0.5 * calibration.loss_before
    train = breast_hospital.data.train
    classes = np.unique(train.labels[:, 0])
    assert calibration.images.dtype == np.uint8 and calibration.images.shape[1:] == train.images.shape[1:]
    assert sorted(np.unique(calibration.labels[:, 0])) == sorted(classes)
    assert len(calibration.labels) == FAST.ipc * len(classes)


def test_noise_initialisation_returns_no_real_image(breast_hospital):
    calibration = breast_hospital.calibration_set(FAST)
    real = breast_hospital.data.train.images.reshape(len(breast_hospital.data.train), -1).astype(np.float32)
    synthetic = calibration.images.reshape(len(calibration.images), -1).astype(np.float32)
    nearest = (
        np.abs(synthetic[:, None, :] - real[None, :, :]).mean(axis=2).min(axis=1)
    )  # mean |pixel diff| to the closest real image
    assert nearest.min() > 10.0  # out of 255: no synthetic image is (close to) a copy of a training image
    assert not calibration.privacy_risk


def test_real_initialisation_is_recorded_as_a_privacy_risk(breast_hospital):
    calibration = breast_hospital.calibration_set(DistillSettings(ipc=2, iterations=0, init="real"))
    assert calibration.privacy_risk and calibration.init == "real"
    real = {bytes(image) for image in breast_hospital.data.train.images}
    assert all(bytes(image) in real for image in calibration.images)  # with no iterations: training images


def test_distillation_is_reproducible(breast_hospital):
    first, second = breast_hospital.calibration_set(FAST), breast_hospital.calibration_set(FAST)
    assert np.array_equal(first.images, second.images)


def test_multi_label_tasks_are_refused_with_the_fix():
    split = SplitArrays(np.zeros((4, 28, 28), np.uint8), np.zeros((4, 14), np.int64))
    with pytest.raises(ValueError, match="multi-label.*strategy=one_shot"):
        distill_calibration_set(lambda x: x.flatten(1), task_info("chestmnist"), split, FAST, 0)


def test_a_calibration_set_survives_the_wire(breast_hospital):
    calibration = breast_hospital.calibration_set(DistillSettings(ipc=1, iterations=2))
    decoded = decode_calibration(RecordDict(calibration_records(calibration)))
    assert np.array_equal(decoded.images, calibration.images) and np.array_equal(decoded.labels, calibration.labels)
    assert decoded.loss_after == pytest.approx(calibration.loss_after)
    assert decode_calibration(RecordDict({})) is None


def test_siamese_augmentation_is_the_same_transform_on_both_sides():
    images = torch.rand(3, 1, 28, 28)
    params = sample_augment(torch.Generator().manual_seed(3))
    assert torch.equal(augment(images, params)[:1], augment(images[:1], params))
    moved = images.clone().requires_grad_(True)
    augment(moved, params).sum().backward()
    assert moved.grad is not None and moved.grad.abs().sum() > 0


def test_distillation_under_the_pretrained_conv_backbone_lowers_the_matching_loss(breast_root):
    """The calibration set of a real BreastMNIST hospital, embedded by EfficientNet-Lite0 (LoRA off)."""
    from fl_app.config import compose_experiment
    from tests.conftest import TINY_CAPS

    # Prepare
    cfg = compose_experiment(
        [
            *TINY_CAPS,
            "model=efficientnet_lite0",
            "model.image_size=32",
            f"data.root={breast_root}",
            "data.flags=[breastmnist]",
            "simulation.num_hospitals=1",
            "strategy.min_hospitals=1",
        ]
    )
    hospital = simulated_hospital(json.loads(hospital_payload(cfg)), 0, 1)
    hospital.model.use_adapter(hospital.experiment["lora"])
    # Execute
    calibration = hospital.calibration_set(DistillSettings(ipc=2, iterations=15, lr=0.05, batch_real=16))
    # Assert
    assert hospital.data.data_source == "medmnist"
    assert calibration.loss_after < calibration.loss_before
    assert calibration.images.shape == (4, 28, 28) and calibration.images.dtype == np.uint8

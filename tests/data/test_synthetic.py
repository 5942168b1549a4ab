import time

import numpy as np
import pytest
from medmnist import INFO
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from fl_app.data import apply_site_shift, synthetic_images, synthetic_labels, synthetic_task


@pytest.mark.parametrize(
    ("flag", "image_shape", "label_width"),
    [("breastmnist", (28, 28), 1), ("retinamnist", (28, 28, 3), 1), ("chestmnist", (28, 28), 14)],
)
def test_official_split_sizes_shapes_and_dtypes(flag, image_shape, label_width):
    # Execute
    task = synthetic_task(flag, size=28, seed=0)

    # Assert
    for split, arrays in task.items():
        n = INFO[flag]["n_samples"][split]
        assert arrays.images.shape == (n, *image_shape) and arrays.images.dtype == np.uint8
        assert arrays.labels.shape == (n, label_width) and arrays.labels.dtype == np.int64
    train_labels = task["train"].labels
    if label_width == 14:
        assert set(np.unique(train_labels)) == {0, 1}
        assert 0.02 < train_labels.mean() < 0.25, "multi-label targets are sparse, like ChestMNIST"
    else:
        assert set(np.unique(train_labels)) == set(range(len(INFO[flag]["label"])))


def test_larger_sizes_render_the_same_task():
    # Execute
    labels = synthetic_labels("bloodmnist", "val", seed=0)[:8]
    images = synthetic_images("bloodmnist", 64, "val", np.arange(8), labels, seed=0)

    # Assert
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8


def test_deterministic_and_seed_dependent():
    # Execute
    first = synthetic_task("dermamnist", 28, seed=5)["val"]
    again = synthetic_task("dermamnist", 28, seed=5)["val"]
    other = synthetic_task("dermamnist", 28, seed=6)["val"]

    # Assert
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.images, other.images)


def test_any_subset_equals_the_same_rows_of_the_full_split():
    # Prepare
    labels = synthetic_labels("pathmnist", "test", seed=0)
    full = synthetic_images("pathmnist", 28, "test", np.arange(len(labels)), labels, seed=0)
    ids = np.array([7179, 3, 4000, 12])

    # Execute
    subset = synthetic_images("pathmnist", 28, "test", ids, labels[ids], seed=0)

    # Assert
    assert np.array_equal(subset, full[ids])


def test_full_dermamnist_train_split_is_fast():
    # Prepare: warm the per-flag pattern cache, as every run after the first hospital does
    labels = synthetic_labels("dermamnist", "train", seed=0)
    synthetic_images("dermamnist", 28, "train", np.arange(2), labels[:2], seed=0)

    # Execute: CPU time, not wall time, so a busy machine (CI shares it) does not fail the test
    start = time.process_time()
    images = synthetic_images("dermamnist", 28, "train", np.arange(len(labels)), labels, seed=0)
    cpu_seconds = time.process_time() - start

    # Assert (about 0.15 s of CPU; a regression to per-image generation costs tens of seconds)
    assert images.shape == (7007, 28, 28, 3)
    assert cpu_seconds < 5.0


@pytest.mark.filterwarnings("ignore", category=ConvergenceWarning)  # a partial fit suffices here
def test_class_structure_is_learnable_by_a_linear_model():
    # Prepare: OCTMNIST (4 classes); the first 1500 train and 1000 test images of the synthetic splits
    train_y = synthetic_labels("octmnist", "train", seed=0)[:1500]
    test_y = synthetic_labels("octmnist", "test", seed=0)
    train_x = synthetic_images("octmnist", 28, "train", np.arange(1500), train_y, seed=0)
    test_x = synthetic_images("octmnist", 28, "test", np.arange(len(test_y)), test_y, seed=0)

    # Execute (one BLAS thread: with torch's OpenMP loaded, threaded BLAS makes this fit ~20x slower)
    with threadpool_limits(1):
        model = LogisticRegression(max_iter=100).fit(train_x.reshape(1500, -1) / 255.0, train_y[:, 0])
    accuracy = model.score(test_x.reshape(len(test_x), -1) / 255.0, test_y[:, 0])

    # Assert
    majority = np.bincount(test_y[:, 0]).max() / len(test_y)
    assert accuracy > majority + 0.2, f"accuracy {accuracy:.2f} vs majority class {majority:.2f}"


def test_site_shift_changes_pixel_statistics_deterministically():
    # Prepare
    images = synthetic_task("bloodmnist", 28, seed=0)["val"].images

    # Execute
    site_1 = apply_site_shift(images, hospital_id=1, seed=0)
    site_1_again = apply_site_shift(images, hospital_id=1, seed=0)
    site_2 = apply_site_shift(images, hospital_id=2, seed=0)
    unshifted = apply_site_shift(images, hospital_id=1, seed=0, strength=0.0)

    # Assert
    assert np.array_equal(site_1, site_1_again)
    assert site_1.shape == images.shape and site_1.dtype == np.uint8
    channel_means = [x.reshape(-1, 3).mean(axis=0) for x in (images, site_1, site_2)]
    assert np.abs(channel_means[1] - channel_means[0]).max() > 2.0
    assert np.abs(channel_means[2] - channel_means[1]).max() > 2.0
    assert np.array_equal(unshifted, images)


def test_site_shift_keeps_grayscale_layout():
    # Prepare
    images = synthetic_task("breastmnist", 28, seed=0)["test"].images

    # Execute
    shifted = apply_site_shift(images, hospital_id=3, seed=0)

    # Assert
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    assert not np.array_equal(shifted, images)

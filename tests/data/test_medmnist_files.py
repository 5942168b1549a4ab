import medmnist
import numpy as np
import pytest

from fl_app.data import MedMNISTUnavailable, load_medmnist_task, synthetic_task, write_npz


def test_real_breastmnist_loads_through_medmnist(breast_root):
    # Execute
    task = load_medmnist_task("breastmnist", breast_root, size=28)

    # Assert
    assert {split: len(arrays) for split, arrays in task.items()} == {"train": 546, "val": 78, "test": 156}
    for arrays in task.values():
        assert arrays.images.dtype == np.uint8 and arrays.images.shape[1:] == (28, 28)
        assert arrays.labels.dtype == np.int64 and arrays.labels.shape == (len(arrays), 1)
        assert set(np.unique(arrays.labels)) == {0, 1}


@pytest.mark.parametrize("flag", ["breastmnist", "dermamnist"])
def test_written_synthetic_file_loads_through_the_real_class(tmp_path, flag):
    # Prepare
    task = synthetic_task(flag, 28, seed=0)
    write_npz(tmp_path / f"{flag}.npz", task)

    # Execute
    loaded = load_medmnist_task(flag, tmp_path, size=28)
    dataset = getattr(medmnist, medmnist.INFO[flag]["python_class"])(split="test", root=str(tmp_path))
    image, target = dataset[0]

    # Assert
    for split in task:
        assert np.array_equal(loaded[split].images, task[split].images)
        assert np.array_equal(loaded[split].labels, task[split].labels)
    assert image.size == (28, 28) and target.shape == (1,)


def test_written_file_at_larger_size_uses_the_size_suffix(tmp_path):
    # Prepare: only the shape matters here, so shrink the images of a 28 px task to 64 px by tiling
    task = synthetic_task("breastmnist", 28, seed=0)
    for arrays in task.values():
        arrays.images = np.tile(arrays.images, (1, 3, 3))[:, :64, :64]
    write_npz(tmp_path / "breastmnist_64.npz", task)

    # Execute
    loaded = load_medmnist_task("breastmnist", tmp_path, size=64)

    # Assert
    assert loaded["train"].images.shape == (546, 64, 64)


def test_missing_file_names_flag_file_and_fix(tmp_path):
    # Execute / Assert
    with pytest.raises(MedMNISTUnavailable, match=r"'pathmnist' \(28px\).*pathmnist.npz not found.*enable download"):
        load_medmnist_task("pathmnist", tmp_path)


def test_missing_root_raises_the_same_exception(tmp_path):
    with pytest.raises(MedMNISTUnavailable, match=r"root directory does not exist"):
        load_medmnist_task("breastmnist", tmp_path / "nowhere")


def test_home_in_root_is_expanded(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "medmnist").mkdir()
    write_npz(tmp_path / "medmnist" / "breastmnist.npz", synthetic_task("breastmnist", 28, seed=0))

    # Execute
    task = load_medmnist_task("breastmnist", "~/medmnist")

    # Assert
    assert len(task["train"]) == 546


def test_wrong_split_size_is_rejected(tmp_path):
    # Prepare
    task = synthetic_task("breastmnist", 28, seed=0)
    task["train"] = task["train"].subset(np.arange(500))
    write_npz(tmp_path / "breastmnist.npz", task)

    # Execute / Assert
    with pytest.raises(MedMNISTUnavailable, match=r"train split has 500 images, expected 546"):
        load_medmnist_task("breastmnist", tmp_path)


def test_failed_download_raises_unavailable_and_leaves_nothing(tmp_path, monkeypatch):
    # Prepare: the Zenodo address points at a file that does not exist (no network touched)
    info = {**medmnist.INFO["breastmnist"], "url": (tmp_path / "nowhere.npz").as_uri()}
    monkeypatch.setitem(medmnist.INFO, "breastmnist", info)

    # Execute / Assert
    with pytest.raises(MedMNISTUnavailable, match=r"download from file:.*nowhere.npz failed"):
        load_medmnist_task("breastmnist", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_fetches_the_file_and_checks_its_md5(tmp_path, monkeypatch, breast_root):
    # Prepare: "Zenodo" serves the real BreastMNIST file from the shared folder
    info = {**medmnist.INFO["breastmnist"], "url": (breast_root / "breastmnist.npz").as_uri()}
    monkeypatch.setitem(medmnist.INFO, "breastmnist", info)
    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", lambda self: pytest.fail("medmnist's torchvision download called"))

    # Execute
    task = load_medmnist_task("breastmnist", tmp_path, download=True)

    # Assert
    assert len(task["train"]) == 546 and (tmp_path / "breastmnist.npz").exists()


def test_download_with_a_wrong_md5_is_refused_and_not_kept(tmp_path, monkeypatch, breast_root):
    # Prepare: a file whose MD5 is not the published one
    info = {**medmnist.INFO["breastmnist"], "url": (breast_root / "pneumoniamnist.npz").as_uri()}
    monkeypatch.setitem(medmnist.INFO, "breastmnist", info)

    # Execute / Assert
    with pytest.raises(MedMNISTUnavailable, match=r"MD5 28209eda.*expected 750601b1"):
        load_medmnist_task("breastmnist", tmp_path, download=True)
    assert not (tmp_path / "breastmnist.npz").exists()


def test_existing_file_is_used_without_downloading(tmp_path, monkeypatch):
    # Prepare: medmnist's download() would need torchvision even for a file already present
    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", lambda self: pytest.fail("download called"))
    write_npz(tmp_path / "breastmnist.npz", synthetic_task("breastmnist", 28, seed=0))

    # Execute
    task = load_medmnist_task("breastmnist", tmp_path, download=True)

    # Assert
    assert len(task["test"]) == 156

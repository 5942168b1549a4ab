"""A site's own data: node-config parsing, .npz and image-folder reading, declared tasks, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fl_app.data import (
    SiteConfig,
    SiteDataError,
    declared_task,
    experiment_tasks,
    load_site,
    site_config,
    task_info,
    validate_data_config,
    write_npz,
)
from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.demo_sites import write_demo_image_folder, write_demo_npz
from fl_app.data.site_files import stratified_split

SITE_DATA = {"scenario": "site", "tasks": {"breastmnist": {}, "chest": {"classes": ["pneumonia", "normal"]}}, "max_train": None, "max_eval": None}


def site(path, task="breastmnist", hospital_id=0) -> SiteConfig:
    return SiteConfig(hospital_id=hospital_id, task=task, data_path=path)


# node config ----------------------------------------------------------------------------------


def test_site_node_config_names_hospital_task_and_path(tmp_path):
    config = site_config({"hospital-id": 2, "task": "chest", "data-path": str(tmp_path / "x")})

    assert config == SiteConfig(2, "chest", tmp_path / "x")


def test_a_site_may_name_its_lora_rank(tmp_path):
    config = site_config({"hospital-id": 2, "task": "chest", "data-path": str(tmp_path / "x"), "lora-r": 4})

    assert config == SiteConfig(2, "chest", tmp_path / "x")


def test_simulation_node_config_is_not_a_site():
    assert site_config({"partition-id": 1, "num-partitions": 3}) is None


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"hospital-id": 0, "task": "chest", "datapath": "/x"}, "missing keys ['data-path'], unknown keys ['datapath']"),
        ({}, "missing keys ['hospital-id', 'task', 'data-path']"),
        ({"partition-id": 0, "hospital-id": 0, "task": "chest", "data-path": "/x"}, "mixes simulation keys"),
        ({"hospital-id": "zero", "task": "chest", "data-path": "/x"}, "hospital-id='zero' must be an integer >= 0"),
        ({"hospital-id": -1, "task": "chest", "data-path": "/x"}, "must be an integer >= 0"),
        ({"hospital-id": 0, "task": "chest", "data-path": "/x", "lora-r": 0}, "lora-r=0 must be a positive number"),
        ({"hospital-id": 0, "task": "chest", "data-path": "/x", "privacy-epsilon": 0}, "this site's DP budget"),
        ({"hospital-id": 0, "task": "chest", "data-path": "/x", "privacy-epsilon": float("inf")}, "privacy-epsilon=inf"),
        ({"hospital-id": 0, "task": "chest", "data-path": "/x", "privacy-delta": 1.0}, "privacy-delta=1.0 must be"),
        ({"hospital-id": 0, "task": "chest", "data-path": "/x", "privacy-ledger": ""}, "privacy-ledger='' must be a folder"),
    ],
)
def test_bad_node_config_says_what_to_pass(node_config, message):
    with pytest.raises(ValueError, match="--node-config") as error:
        site_config(node_config)

    assert message in str(error.value)


# declared tasks -------------------------------------------------------------------------------


def test_site_experiment_declares_flags_and_folder_tasks():
    tasks = experiment_tasks(SITE_DATA)

    assert tasks["breastmnist"] == task_info("breastmnist")
    assert tasks["chest"].label_names == ("normal", "pneumonia")  # sorted: the folder order
    assert tasks["chest"].n_outputs == 2 and tasks["chest"].task_type == "binary-class"


def test_simulation_tasks_are_the_flags(data_cfg):
    assert list(experiment_tasks(data_cfg(scenario="multi_task", flags=["pathmnist", "dermamnist"]))) == ["pathmnist", "dermamnist"]


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("chest", {}, "needs its classes"),
        ("breastmnist", {"classes": ["a", "b"]}, "is a MedMNIST flag"),
        ("chest", {"classes": ["only"]}, "at least two distinct classes"),
        ("chest", {"classes": "normal,pneumonia"}, "must be a list"),
        ("chest", {"classes": ["a", "b"], "size": 64}, "unknown keys ['size']"),
        ("chest.xray", {"classes": ["a", "b"]}, "must start with a letter"),
    ],
)
def test_bad_task_declaration_names_the_fix(name, spec, message):
    with pytest.raises(ValueError) as error:
        declared_task(name, spec)

    assert message in str(error.value)


def test_site_data_config_is_validated_without_simulation_keys():
    validate_data_config(SITE_DATA, num_hospitals=3)
    with pytest.raises(ValueError, match="data.tasks must map"):
        validate_data_config({**SITE_DATA, "tasks": []}, num_hospitals=3)


# npz ------------------------------------------------------------------------------------------


def test_npz_site_keeps_its_own_splits(tmp_path):
    path = write_demo_npz(tmp_path / "mine.npz", "breastmnist", n_train=30, n_eval=12)

    data = load_site(SITE_DATA, site(path, hospital_id=4), image_size=28, seed=0)

    assert (len(data.train), len(data.val), len(data.test)) == (30, 12, 12)
    assert data.hospital_id == 4 and data.task.name == "breastmnist"
    assert data.data_source == "synthetic"  # the demo file says so; it used to be recorded as medmnist


def test_a_site_file_without_the_synthetic_marker_is_medmnist_and_a_folder_is_images(tmp_path):
    from fl_app.data.site_files import SOURCE_FILE

    demo = write_demo_npz(tmp_path / "demo.npz", "breastmnist", n_train=30, n_eval=12)
    with np.load(demo) as archive:
        np.savez(tmp_path / "export.npz", **{k: archive[k] for k in archive if k != "data_source"})
    folder = write_demo_image_folder(tmp_path / "chest", ["normal", "pneumonia"], n_images=40)
    (folder / SOURCE_FILE).unlink()

    exported = load_site(SITE_DATA, site(tmp_path / "export.npz"), image_size=28, seed=0)
    images = load_site(SITE_DATA, site(folder, task="chest"), image_size=28, seed=0)

    assert (exported.data_source, images.data_source) == ("medmnist", "images")


def test_npz_site_is_capped_like_a_simulated_hospital(tmp_path):
    path = write_demo_npz(tmp_path / "mine.npz", "breastmnist", n_train=30, n_eval=12)

    data = load_site({**SITE_DATA, "max_train": 10, "max_eval": 5}, site(path), image_size=28, seed=0)

    assert (len(data.train), len(data.val), len(data.test)) == (10, 5, 5)


def _npz(path, **changes):
    splits = {s: SplitArrays(np.zeros((4, 28, 28), np.uint8), np.zeros((4, 1), np.int64)) for s in SPLITS}
    arrays = {f"{s}_{k}": getattr(splits[s], k) for s in SPLITS for k in ("images", "labels")}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val_labels": None}, "lacks arrays ['val_labels']"),
        ({"train_images": np.zeros((4, 28, 28), np.float32)}, "expected uint8"),
        ({"test_labels": np.full((4, 1), 7)}, "expects 4 rows of 1 label(s) in 0..1"),
        ({"test_images": np.zeros((0, 28, 28), np.uint8), "test_labels": np.zeros((0, 1))}, "the test split is empty"),
    ],
)
def test_malformed_npz_names_the_file_and_the_problem(tmp_path, changes, message):
    path = _npz(tmp_path / "bad.npz", **changes)

    with pytest.raises(SiteDataError) as error:
        load_site(SITE_DATA, site(path), image_size=28, seed=0)

    assert str(path) in str(error.value) and message in str(error.value)


def test_unreadable_npz_is_a_site_data_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip archive")

    with pytest.raises(SiteDataError, match="is not a readable .npz file"):
        load_site(SITE_DATA, site(path), image_size=28, seed=0)


# image folder ---------------------------------------------------------------------------------


def test_image_folder_is_resized_labelled_by_sorted_folder_and_split(tmp_path):
    folder = write_demo_image_folder(tmp_path / "chest", ["pneumonia", "normal"], n_images=40)

    data = load_site(SITE_DATA, site(folder, task="chest"), image_size=32, seed=0)

    assert data.data_source == "synthetic" and data.task.label_names == ("normal", "pneumonia")
    assert data.train.images.shape[1:] == (32, 32, 3) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.val) + len(data.test) == 40
    n_normal = len(list((folder / "normal").iterdir()))
    assert sum(int((d.labels == 0).sum()) for d in (data.train, data.val, data.test)) == n_normal


def test_image_folder_split_is_the_same_in_every_run(tmp_path):
    folder = write_demo_image_folder(tmp_path / "chest", ["normal", "pneumonia"], n_images=40)

    first = load_site(SITE_DATA, site(folder, task="chest"), image_size=28, seed=0)
    again = load_site(SITE_DATA, site(folder, task="chest"), image_size=28, seed=5)  # another run seed

    assert np.array_equal(first.test.images, again.test.images)


def test_stratified_split_keeps_every_class_in_every_split():
    labels = np.array([0] * 20 + [1] * 10)

    splits = stratified_split(labels, seed=0)

    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(30))
    assert [len(splits[s]) for s in SPLITS] == [21, 3, 6]
    assert all(set(labels[idx]) == {0, 1} for idx in splits.values())


def test_image_folder_with_other_classes_lists_both(tmp_path):
    folder = write_demo_image_folder(tmp_path / "chest", ["healthy", "sick"], n_images=10)

    with pytest.raises(SiteDataError) as error:
        load_site(SITE_DATA, site(folder, task="chest"), image_size=28, seed=0)

    assert "['healthy', 'sick']" in str(error.value) and "['normal', 'pneumonia']" in str(error.value)


def test_unreadable_image_names_the_file(tmp_path):
    folder = write_demo_image_folder(tmp_path / "chest", ["normal", "pneumonia"], n_images=10)
    bad = folder / "normal" / "corrupt.png"
    bad.write_bytes(b"not a png")

    with pytest.raises(SiteDataError, match="corrupt.png is not a readable image"):
        load_site(SITE_DATA, site(folder, task="chest"), image_size=28, seed=0)


def test_empty_class_folder_is_refused(tmp_path):
    for name in ("normal", "pneumonia"):
        (tmp_path / "chest" / name).mkdir(parents=True)
    Image.new("L", (30, 30)).save(tmp_path / "chest" / "normal" / "a.jpg")

    with pytest.raises(SiteDataError, match="pneumonia holds no PNG or JPEG images"):
        load_site(SITE_DATA, site(tmp_path / "chest", task="chest"), image_size=28, seed=0)


# the site and the experiment ------------------------------------------------------------------


def test_missing_data_path_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(SiteDataError) as error:
        load_site(SITE_DATA, site(tmp_path / "nowhere.npz"), image_size=28, seed=0)

    assert f"data-path={tmp_path / 'nowhere.npz'} does not exist at this site" in str(error.value)
    assert "point data-path at" in str(error.value)


def test_a_file_that_is_not_npz_is_refused(tmp_path):
    path = tmp_path / "scan.csv"
    path.write_text("1,2,3")

    with pytest.raises(SiteDataError, match="is not a .npz file"):
        load_site(SITE_DATA, site(path), image_size=28, seed=0)


def test_task_outside_the_experiment_is_refused_with_the_fix(tmp_path):
    path = write_demo_npz(tmp_path / "derma.npz", "dermamnist", n_train=8, n_eval=4)

    with pytest.raises(ValueError, match=r"task='dermamnist' is not one of the experiment's tasks \['breastmnist', 'chest'\]"):
        load_site(SITE_DATA, site(path, task="dermamnist"), image_size=28, seed=0)


def test_labels_that_do_not_fit_the_task_hint_at_task(tmp_path):
    path = tmp_path / "blood.npz"
    write_npz(path, {s: SplitArrays(np.zeros((5, 28, 28, 3), np.uint8), np.full((5, 1), 6)) for s in SPLITS})

    with pytest.raises(SiteDataError, match="is task= the right task for this file"):
        load_site(SITE_DATA, site(path), image_size=28, seed=0)


def test_preflight_reads_the_site_as_the_supernode_will_and_names_a_missing_file(tmp_path):
    from fl_app.data.site import preflight

    folder = write_demo_image_folder(tmp_path / "chest", ["normal", "pneumonia"], n_images=40)

    summary = preflight({"hospital-id": 2, "task": "chest", "data-path": str(folder)})

    assert summary.startswith("hospital 2: task chest (2 classes), synthetic data") and "test images" in summary
    with pytest.raises(SiteDataError, match="missing.npz does not exist at this site"):
        preflight({"hospital-id": 0, "task": "breastmnist", "data-path": str(tmp_path / "missing.npz")})


def test_the_site_preset_declares_only_tasks_the_demo_sites_hold():
    from fl_app.config import compose_experiment

    declared = set(compose_experiment(["data=site"]).data.tasks)

    assert declared == {"breastmnist", "pneumoniamnist"}  # + chest, declared by the rehearsal's override

import logging
from collections import Counter

import numpy as np
import pytest

from fl_app.data import (
    MedMNISTUnavailable,
    SplitArrays,
    clear_task_cache,
    synthetic_stand_ins,
    hospital_tasks,
    load_hospital,
    load_medmnist_task,
    synthetic_task,
    validate_data_config,
    write_npz,
)


def _rows(arrays: SplitArrays) -> Counter:
    """Multiset of (image, label) rows, to compare hospitals' samples with a whole split."""
    return Counter(image.tobytes() + label.tobytes() for image, label in zip(arrays.images, arrays.labels, strict=True))


def test_multi_task_assigns_flags_round_robin(data_cfg):
    # Prepare
    cfg = data_cfg(scenario="multi_task", flags=["pathmnist", "dermamnist"])

    # Execute
    tasks = hospital_tasks(cfg, 5)

    # Assert
    assert tasks == ["pathmnist", "dermamnist", "pathmnist", "dermamnist", "pathmnist"]


def test_multi_center_gives_every_hospital_the_one_flag(data_cfg):
    assert hospital_tasks(data_cfg(), 3) == ["breastmnist"] * 3


def test_multi_center_real_breastmnist_partitions_are_disjoint_and_complete(data_cfg, breast_root):
    # Prepare
    cfg = data_cfg(root=str(breast_root), synthetic_fallback=False)
    full = load_medmnist_task("breastmnist", breast_root)

    # Execute
    hospitals = [load_hospital(cfg, h, num_hospitals=3, seed=0) for h in range(3)]

    # Assert
    assert all(h.data_source == "medmnist" and h.task.name == "breastmnist" for h in hospitals)
    for split in ("train", "val", "test"):
        parts = [getattr(h, split) for h in hospitals]
        assert sum(len(p) for p in parts) == len(full[split])
        assert sum((_rows(p) for p in parts), Counter()) == _rows(full[split])
    assert min(len(h.train) for h in hospitals) >= 10


def test_partitions_do_not_depend_on_which_hospital_loads_first(data_cfg, breast_root):
    # Prepare
    cfg = data_cfg(root=str(breast_root), partition="dirichlet", dirichlet_alpha=0.3)

    # Execute: two "processes" that load different hospitals first
    first = load_hospital(cfg, 2, 3, seed=7)
    clear_task_cache()
    load_hospital(cfg, 0, 3, seed=7)
    again = load_hospital(cfg, 2, 3, seed=7)

    # Assert
    assert np.array_equal(first.train.images, again.train.images)
    assert np.array_equal(first.test.labels, again.test.labels)


def test_dirichlet_hospitals_differ_in_label_mix_and_test_follows_train(data_cfg, breast_root):
    # Prepare
    cfg = data_cfg(root=str(breast_root), partition="dirichlet", dirichlet_alpha=0.2, min_samples_per_hospital=30)

    # Execute
    hospitals = [load_hospital(cfg, h, 3, seed=0) for h in range(3)]

    # Assert
    train_rates = [h.train.labels.mean() for h in hospitals]
    test_rates = [h.test.labels.mean() if len(h.test) else np.nan for h in hospitals]
    assert max(train_rates) - min(train_rates) > 0.2
    assert np.nanmax(np.abs(np.subtract(train_rates, test_rates))) < 0.2


def test_caps_subsample_each_hospitals_own_partition(data_cfg, breast_root):
    # Prepare
    uncapped_cfg = data_cfg(root=str(breast_root))
    capped_cfg = data_cfg(root=str(breast_root), max_train=50, max_eval=10)

    # Execute
    uncapped = load_hospital(uncapped_cfg, 1, 3, seed=0)
    capped = load_hospital(capped_cfg, 1, 3, seed=0)

    # Assert
    assert len(capped.train) == 50 and len(capped.val) == 10 and len(capped.test) == 10
    assert not _rows(capped.train) - _rows(uncapped.train), "capped samples come from the hospital's partition"
    assert not _rows(capped.test) - _rows(uncapped.test)


def test_missing_files_fall_back_to_synthetic_with_one_log_line(data_cfg, tmp_path, caplog):
    # Prepare
    cfg = data_cfg(root=str(tmp_path), synthetic_fallback=True, max_train=100)

    # Execute
    with caplog.at_level(logging.INFO, logger="medforge"):
        hospitals = [load_hospital(cfg, h, 3, seed=0) for h in range(3)]

    # Assert
    assert all(h.data_source == "synthetic" for h in hospitals)
    assert [len(h.train) for h in hospitals] == [100, 100, 100]
    records = [r for r in caplog.records if r.name == "medforge"]
    assert len(records) == 1, "one line per task and process, not per hospital"
    message = records[0].getMessage()
    assert "'breastmnist' (28px) not found under" in message and str(tmp_path) in message
    assert "SYNTHETIC" in message and "put breastmnist.npz there or set data.download=true" in message


def test_synthetic_stand_ins_names_the_missing_files(data_cfg, tmp_path, breast_root):
    # Prepare
    cfg = data_cfg(root=str(breast_root), flags=["breastmnist", "pathmnist"], scenario="multi_task")

    # Execute
    missing = synthetic_stand_ins(cfg)

    # Assert
    assert missing == ["pathmnist"]
    assert synthetic_stand_ins({**cfg, "synthetic_fallback": False}) == []


def test_synthetic_hospitals_have_their_own_site_look(data_cfg, tmp_path):
    # Prepare
    cfg = data_cfg(root=str(tmp_path), synthetic_fallback=True)

    # Execute
    hospitals = [load_hospital(cfg, h, 3, seed=0) for h in range(3)]

    # Assert
    means = [h.train.images.mean() for h in hospitals]
    assert max(means) - min(means) > 2.0


def test_missing_files_without_fallback_raise(data_cfg, tmp_path):
    # Prepare
    cfg = data_cfg(root=str(tmp_path), synthetic_fallback=False)

    # Execute / Assert
    with pytest.raises(MedMNISTUnavailable, match=r"'breastmnist'"):
        load_hospital(cfg, 0, 2, seed=0)


def test_multi_task_hospitals_get_their_own_tasks(data_cfg, tmp_path):
    # Prepare: a real-format file for one task, nothing for the other
    write_npz(tmp_path / "breastmnist.npz", synthetic_task("breastmnist", 28, seed=1))
    cfg = data_cfg(scenario="multi_task", flags=["breastmnist", "chestmnist"], max_train=64, max_eval=32)

    # Execute
    hospitals = [load_hospital(cfg, h, 4, seed=0) for h in range(4)]

    # Assert
    assert [h.task.name for h in hospitals] == ["breastmnist", "chestmnist"] * 2
    assert [h.data_source for h in hospitals] == ["medmnist", "synthetic"] * 2
    assert hospitals[1].train.labels.shape == (64, 14) and hospitals[1].task.multi_label
    assert hospitals[0].train.images.shape == (64, 28, 28)


def test_hospital_id_out_of_range(data_cfg):
    with pytest.raises(ValueError, match=r"hospital_id must be in \[0, 3\), got 3"):
        load_hospital(data_cfg(), 3, 3, seed=0)


def test_valid_config_passes(data_cfg):
    validate_data_config(data_cfg(scenario="multi_task", flags=["pathmnist", "chestmnist"]), 8)


@pytest.mark.parametrize(
    ("overrides", "num_hospitals", "match"),
    [
        ({"scenario": "silo"}, 3, r"unknown data.scenario 'silo'; valid scenarios: multi_task, multi_center"),
        ({"flags": ["pathmnist", "mnist"]}, 3, r"unknown or 3D flags \['mnist'\]; valid flags: pathmnist"),
        ({"flags": ["organmnist3d"]}, 3, r"unknown or 3D flags \['organmnist3d'\]"),
        ({"flags": "breastmnist"}, 3, r"data.flags must be a list"),
        ({"flags": []}, 3, r"data.flags is empty"),
        ({"flags": ["breastmnist", "pathmnist"]}, 3, r"multi_center needs exactly one flag"),
        ({"size": 32}, 3, r"data.size=32 is not a MedMNIST size; valid sizes: \(28, 64, 128, 224\)"),
        ({"partition": "shards"}, 3, r"unknown data.partition 'shards'; valid schemes: iid, dirichlet"),
        ({"dirichlet_alpha": 0}, 3, r"data.dirichlet_alpha must be a number > 0"),
        ({"dirichlet_alpha": -1.0}, 3, r"data.dirichlet_alpha must be a number > 0 .*, got -1.0"),
        ({"min_samples_per_hospital": -1}, 3, r"min_samples_per_hospital must be an integer >= 0"),
        ({"max_train": 0}, 3, r"data.max_train must be null \(no cap\) or an integer >= 1, got 0"),
        ({"download": "yes"}, 3, r"data.download must be true or false"),
        ({}, 0, r"num_hospitals must be an integer >= 1, got 0"),
        (
            {"min_samples_per_hospital": 100},
            6,
            r"more hospitals than samples: 6 hospitals x data.min_samples_per_hospital=100 > 546 breastmnist",
        ),
    ],
)
def test_validate_data_config_names_key_value_and_choices(data_cfg, overrides, num_hospitals, match):
    with pytest.raises(ValueError, match=match):
        validate_data_config(data_cfg(**overrides), num_hospitals)


def test_validate_data_config_lists_missing_keys(data_cfg):
    # Prepare
    cfg = data_cfg()
    del cfg["max_eval"]

    # Execute / Assert
    with pytest.raises(ValueError, match=r"lacks keys \['max_eval'\]"):
        validate_data_config(cfg, 3)


def test_validate_accepts_an_omegaconf_config(data_cfg):
    # Prepare
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(data_cfg(scenario="multi_task", flags=["pathmnist", "octmnist"]))

    # Execute / Assert
    validate_data_config(cfg, 4)
    assert hospital_tasks(cfg, 3) == ["pathmnist", "octmnist", "pathmnist"]

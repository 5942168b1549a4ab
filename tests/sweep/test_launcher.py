"""The medforge launcher's job folders: Hydra's names, shortened only when a file system would refuse them."""

from __future__ import annotations

from fl_app.sweep.launcher import MAX_FOLDER_NAME, job_folder_name


def test_a_short_job_folder_keeps_hydras_name():
    assert job_folder_name("2_seed=0,strategy=fedavg") == "2_seed=0,strategy=fedavg"


def test_a_job_folder_too_long_for_a_file_system_is_shortened_uniquely(tmp_path):
    overrides = ",".join(f"model.preset.option_{i}={i}" for i in range(20))
    first, second = job_folder_name(f"0_{overrides},seed=0"), job_folder_name(f"0_{overrides},seed=1")

    assert first.startswith("0_model.preset.option_0=0") and len(first.encode()) <= MAX_FOLDER_NAME
    assert first != second
    (tmp_path / first).mkdir()  # a name the file system takes

"""The sweep's manifest, its federation groups and the marker lines that split its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_app.sweep.jobs import (
    SweepJob,
    group_by_shape,
    job_marker,
    marked_job,
    read_manifest,
    stop_marker,
    write_manifest,
)


def test_jobs_are_grouped_by_federation_shape_in_sweep_order(tiny_experiment):
    configs = [
        tiny_experiment("seed=0"),
        tiny_experiment("simulation.num_hospitals=4"),
        tiny_experiment("seed=1", "strategy=fedavg"),  # same federation as the first: shares its simulation
        tiny_experiment("simulation.client_gpus=0.5"),
        tiny_experiment("simulation.num_hospitals=4", "seed=2"),
    ]

    assert group_by_shape(configs) == [[0, 2], [1, 4], [3]]


def test_the_manifest_round_trips(tmp_path):
    jobs = [
        SweepJob(tmp_path / "0" / "config.yaml", tmp_path / "0", "abc"),
        SweepJob(Path("/x/c.yaml"), Path("/x"), ""),
    ]

    assert read_manifest(write_manifest(tmp_path / "sweep-0.json", jobs)) == jobs
    assert jobs[0].name == "0"


def test_a_broken_manifest_names_the_file_and_who_writes_it(tmp_path):
    path = tmp_path / "sweep-0.json"
    path.write_text('{"jobs": [{"config_path": "c.yaml"}]}')

    with pytest.raises(ValueError, match=r"sweep-0.json.*scripts/run.py -m"):
        read_manifest(path)


def test_a_marker_names_its_job_as_flower_streams_it(tmp_path):
    job = SweepJob(tmp_path / "3" / "config.yaml", tmp_path / "3", "")
    streamed = f"\x1b[92mINFO \x1b[0m:      {job_marker(2, 5, job)}\n"

    assert marked_job(streamed) == 2
    assert marked_job("INFO :      MedForge: strategy=fedavg, 3 hospitals") is None


def test_an_interrupted_sweep_starts_no_further_job(tmp_path):
    from fl_app.sweep.server import run_jobs_on_grid

    jobs = [SweepJob(tmp_path / "0" / "config.yaml", tmp_path / "0", "")]
    marker = stop_marker(tmp_path / "sweep-0.json")
    marker.touch()

    assert run_jobs_on_grid(grid=None, jobs=jobs, stop_requested=marker.exists) == []
    assert marker.name == "sweep-0.stop"

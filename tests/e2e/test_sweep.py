"""`scripts/run.py -m`: a sweep's jobs share one Flower simulation (the medforge Hydra launcher)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fl_app.config import compose_experiment
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def tiny_overrides(tmp: Path) -> list[str]:
    return [*TINY, "train.local_epochs=1", f"data.root={tmp / 'no-medmnist'}", "seed=1", "quiet=true"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """4 jobs: 2 refused by validation (client_cpus=0), then one whose hospitals all fail, then a good one."""
    tmp = tmp_path_factory.mktemp("sweep")
    command = [
        sys.executable,
        str(REPO / "scripts" / "run.py"),
        "-m",
        f"hydra.sweep.dir={tmp / 'multirun'}",
        "hydra.sweep.subdir=${hydra.job.num}",
        *tiny_overrides(tmp),
        "simulation.client_cpus=0,1",
        "simulation.fail_hospitals=[0,1,2],[]",
    ]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    return tmp, completed


def test_a_failed_job_does_not_stop_the_others_and_the_sweep_reports_it(sweep):
    tmp, completed = sweep
    folders = [tmp / "multirun" / str(job) for job in range(4)]

    statuses = [(read_results(folder) or {}).get("status") for folder in folders]

    assert completed.returncode != 0, completed.stdout[-2000:]  # Hydra raises once every job is done
    assert statuses == [None, None, "failed", "completed"], completed.stderr[-3000:]
    assert "simulation.client_cpus=0 must be" in completed.stderr
    assert str(folders[3]) in completed.stdout


def test_the_jobs_share_one_simulation_and_each_keeps_its_own_log_section(sweep):
    tmp, _ = sweep
    sweep_dir = tmp / "multirun"

    manifests = sorted(path.name for path in sweep_dir.glob("sweep-*.json"))
    failed_log = (sweep_dir / "2" / "flower.log").read_text()
    good_log = (sweep_dir / "3" / "flower.log").read_text()

    assert manifests == ["sweep-0.json"]  # the two runnable jobs have one federation shape
    assert "[sweep] job 1/2 begins" in failed_log and "job 2/2" not in failed_log
    assert good_log.splitlines()[0].endswith(f"[sweep] job 2/2 begins: {sweep_dir / '3'}")
    assert (sweep_dir / "3" / "config.yaml").exists() and (sweep_dir / "3" / "adapters" / "merged").is_dir()


def test_a_sweep_job_scores_exactly_what_the_same_job_run_alone_scores(sweep, tmp_path):
    tmp, _ = sweep
    in_sweep = read_results(tmp / "multirun" / "3")
    cfg = compose_experiment([*tiny_overrides(tmp), "simulation.client_cpus=1", "simulation.fail_hospitals=[]"])

    alone = read_results(run_simulation(cfg, tmp_path / "alone", quiet=True))

    assert [v["name"] for v in alone["versions"]] == [v["name"] for v in in_sweep["versions"]]
    for mine, theirs in zip(alone["versions"], in_sweep["versions"]):
        assert mine["per_task"] == theirs["per_task"], mine["name"]
    assert alone["communication"]["upload_bytes"] == in_sweep["communication"]["upload_bytes"]


def test_an_interrupted_sweep_stops_every_process_and_marks_the_job_under_way(tmp_path):
    import signal

    from tests.e2e.test_faults import assert_no_run_processes_left, received, wait_for

    sweep_dir = tmp_path / "multirun"
    command = [
        sys.executable,
        str(REPO / "scripts" / "run.py"),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",
        *tiny_overrides(tmp_path),
        "simulation.slow_hospitals={2:600}",  # job 0 is still training when the signal comes
        "seed=0,1",
    ]
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        try:
            wait_for(lambda: received(sweep_dir / "0") == [0, 1], 300, "job 0: two adapters received")

            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert code == 130, (tmp_path / "stderr").read_text()[-3000:]
    assert_no_run_processes_left()
    first = read_results(sweep_dir / "0")
    assert first["status"] == "interrupted" and first["interrupted"]["stage"] == "train"
    assert read_results(sweep_dir / "1") is None  # never started; its folder holds only its config
    assert (sweep_dir / "1" / "config.yaml").is_file()

"""Fault injection on real simulations (Ray backend, 3 hospitals): a straggler past the deadline,
a hospital process that dies mid-round, a run interrupted by SIGINT/SIGTERM and resumed. Each
asserts on results.json and on processes left running (none may be)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_app.config import compose_experiment
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation
from tests.conftest import REPO
from tests.e2e.conftest import SESSION_TAG, flower_processes
from tests.e2e.test_simulation import tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def assert_no_run_processes_left() -> None:
    """Every Flower/Ray process this module started is gone once the run returned (waited by PID)."""
    import os

    left = flower_processes(os.environ[SESSION_TAG])
    assert not left, f"processes still running after the run returned: {left}"


def test_a_straggler_past_the_deadline_is_left_out_and_the_merge_goes_on(tmp_path):
    # Two Ray workers: one sleeps with hospital 2, the other trains hospitals 0 and 1 (imports included,
    # 10-25 s each on busy cores) well before the deadline; hospital 2 evaluates once awake (it is named then).
    overrides = ["simulation.slow_hospitals={2:150}", "strategy.train_timeout_s=75", "strategy.min_hospitals=2"]
    cfg = compose_experiment(tiny_overrides(tmp_path, *overrides))

    run_dir = run_simulation(cfg, tmp_path / "straggler", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "merged"]
    assert set(results["versions"][-1]["weights"]) == {"0", "1"}
    [failure] = results["failures"]
    assert (failure["hospital_id"], failure["phase"], failure["reason"]) == (2, "train", "timeout")
    assert results["communication"]["per_hospital"]["2"]["upload_bytes"] == 0  # its late reply was never pulled
    assert_no_run_processes_left()


def test_a_hospital_process_dying_mid_round_is_recorded_and_the_run_finishes(tmp_path):
    cfg = compose_experiment(
        tiny_overrides(
            tmp_path, "simulation.crash_hospitals=[1]", "strategy.min_hospitals=1", "strategy.train_timeout_s=120"
        )
    )

    run_dir = run_simulation(cfg, tmp_path / "crash", quiet=True)

    results = read_results(run_dir)
    assert results["status"] == "completed"
    crashed = [f for f in results["failures"] if f["phase"] == "train"]
    # Hospital 1's Ray worker died; Flower's actor pool may hand more queued messages (another hospital's,
    # the evaluation's) to the dead worker. A node that never answers cannot name itself: it is recorded
    # by node id, and named if it answers later.
    assert crashed and all(f["reason"] == "crashed" and f["node_id"] is not None for f in crashed)
    merged = results["versions"][-1]
    assert merged["name"] == "merged" and "1" not in merged["weights"]
    assert all(f["hospital_id"] is None or str(f["hospital_id"]) not in merged["weights"] for f in crashed)
    assert [h["id"] for h in results["hospitals"]] == sorted(int(h) for h in merged["weights"])
    assert_no_run_processes_left()


def start_run(run_dir: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "scripts" / "run.py"), f"hydra.run.dir={run_dir}", "quiet=true", *overrides]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what} not reached within {timeout:.0f} s"
        time.sleep(0.5)


def received(run_dir: Path) -> list[int]:
    try:
        return sorted(r["hospital"] for r in json.loads((run_dir / "results.json").read_text()).get("received", []))
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_stops_every_process_keeps_its_adapters_and_resumes(tmp_path, sig):
    run_dir = tmp_path / "interrupted"
    # Hospital 2 is slow, so the run is still training when the signal comes, with two adapters in.
    process = start_run(run_dir, *tiny_overrides(tmp_path, "simulation.slow_hospitals={2:600}"))
    try:
        wait_for(lambda: received(run_dir) == [0, 1], 300, "two adapters received")

        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], process.stderr.read()[-3000:]
    assert_no_run_processes_left()
    results = read_results(run_dir)
    assert results["status"] == "interrupted" and results["interrupted"]["signal"] == sig.name
    assert results["interrupted"]["stage"] == "train"
    for entry in results["received"]:
        assert (run_dir / entry["adapter"] / "adapter_model.safetensors").is_file()
    if sig is signal.SIGTERM:
        return  # resume is checked once

    resumed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run.py"),
            f"hydra.run.dir={tmp_path / 'resume-call'}",
            f"+resume={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == str(run_dir)
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["resumed"]["from_status"] == "interrupted"
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "merged"]
    assert all(v["mean_acc"] is not None for v in results["versions"])
    assert any("hospitals [2] never delivered" in line for line in results["resumed"]["not_resumed"])

"""The README's Ray-cluster recipe on one machine: `ray start --head`, then a run with RAY_ADDRESS.

Flower's Ray backend calls `ray.init()` without an address, so RAY_ADDRESS (inherited through the
SuperLink) makes the simulation join the existing cluster instead of starting its own; more
nodes join that cluster with `ray start --address=<head>:<port>`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fl_app.server.results import read_results
from fl_app.simulation import free_port
from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

RAY = Path(sys.executable).parent / "ray"


@pytest.fixture
def ray_head():
    """A private Ray head (own port and temp dir, so no other process on this machine joins it); stopped after."""
    port, temp_dir = (
        free_port(),
        tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"),
    )  # short: Ray's socket paths are limited
    command = [
        str(RAY),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--block",
    ]
    with open(Path(temp_dir) / "head.log", "w") as log:
        head = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    try:
        deadline = time.time() + 120
        while not (Path(temp_dir) / "ray_current_cluster").exists():
            assert head.poll() is None and time.time() < deadline, (Path(temp_dir) / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", Path(temp_dir)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_run_joins_an_existing_ray_cluster_through_ray_address(ray_head, tmp_path):
    address, temp_dir = ray_head
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "scripts" / "run.py"),
        f"hydra.run.dir={run_dir}",
        *TINY,
        "train.local_epochs=1",
        f"data.root={tmp_path / 'none'}",
        "quiet=true",
    ]

    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "RAY_ADDRESS": address}
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert read_results(run_dir)["status"] == "completed"
    logs = temp_dir / "session_latest" / "logs"
    assert list(logs.glob("python-core-driver-*")), "the Flower simulation did not connect to the cluster as a driver"
    assert len(list(logs.glob("python-core-worker-*"))) >= 1  # the hospitals' ClientApp actors ran on the cluster

"""End-to-end helpers: every Flower/Ray process a test starts must be gone when it ends."""

from __future__ import annotations

import time

import psutil
import pytest

FLOWER_PROCESSES = ("flower-superlink", "flower-superexec", "flwr-simulation", "flwr-serverapp", "flwr-clientapp", "raylet", "gcs_server")


def flower_processes() -> set[int]:
    """PIDs of live Flower/Ray processes (zombies excluded)."""
    found = set()
    for process in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(process.info["cmdline"] or []) + " " + (process.info["name"] or "")
        if any(name in text for name in FLOWER_PROCESSES):
            found.add(process.info["pid"])
    return found


@pytest.fixture(scope="module")
def no_leftover_processes():
    """Fail the module if it leaves a SuperLink, simulation or Ray process running."""
    before = flower_processes()
    yield
    deadline = time.time() + 15
    while (left := flower_processes() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left running: {[' '.join(psutil.Process(p).cmdline()) for p in left if psutil.pid_exists(p)]}"

"""End-to-end helpers: every Flower/Ray process a test starts must be gone when it ends."""

from __future__ import annotations

import time
import uuid

import psutil
import pytest

FLOWER_PROCESSES = (
    "flower-superlink",
    "flower-superexec",
    "warm_superexec",  # scripts/deploy/warm_superexec.py and the ClientApps it forks
    "flower-supernode",
    "flwr-simulation",
    "flwr-serverapp",
    "flwr-clientapp",
    "raylet",
    "gcs_server",
)
#: Set in the environment of a test module; every process it starts inherits it. Other people's
#: Flower processes on the same machine do not carry it, so they are never counted.
SESSION_TAG = "MEDFORGE_E2E_SESSION"


def flower_processes(tag: str | None = None) -> set[int]:
    """PIDs of live Flower/Ray processes (zombies excluded), only those started under `tag` if given."""
    found = set()
    for process in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(process.info["cmdline"] or []) + " " + (process.info["name"] or "")
        if not any(name in text for name in FLOWER_PROCESSES):
            continue
        try:
            if tag is not None and process.environ().get(SESSION_TAG) != tag:
                continue
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        found.add(process.info["pid"])
    return found


@pytest.fixture(scope="module")
def no_leftover_processes():
    """Fail the module if it leaves a SuperLink, SuperNode, simulation or Ray process running."""
    tag = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SESSION_TAG, tag)
        yield
    deadline = time.time() + 15
    while (left := flower_processes(tag)) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, (
        f"processes left running: {[' '.join(psutil.Process(p).cmdline()) for p in left if psutil.pid_exists(p)]}"
    )

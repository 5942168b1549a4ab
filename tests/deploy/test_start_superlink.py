"""scripts/deploy/start_superlink.sh: the SuperLink's database is private (0600) like the keys."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys

import pytest

from fl_app.simulation import flower_env, free_port, stop_process_group, wait_until_healthy
from tests.conftest import REPO

DEPLOY = REPO / "scripts" / "deploy"


@pytest.mark.slow
def test_the_superlink_database_is_created_0600(tmp_path):
    keys = tmp_path / "keys"
    for args in (["ca"], ["superlink", "--host", "127.0.0.1"]):
        subprocess.run([sys.executable, DEPLOY / "keys.py", "--out", keys, *args], check=True, capture_output=True)
    port = free_port()
    command = [DEPLOY / "start_superlink.sh", "--keys", keys, "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "superlink.log", "wb") as log:
        process = subprocess.Popen(
            command, env=flower_env(tmp_path / "home"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        tls = ssl.create_default_context(cafile=str(keys / "ca.pem"))
        wait_until_healthy(process, f"https://127.0.0.1:{port}/health", 60, tmp_path / "superlink.log", verify=tls)

        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in keys.glob("superlink.db*")}
    finally:
        assert stop_process_group(process) == []

    assert modes.get("superlink.db") == 0o600, modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes

"""The coordinator's app code cannot read a hospital's node key when the site runs it as another
user (start_supernode.sh --clientapp-user). A probe app (tests/e2e/key_probe_app) does what the
issue-26 attacker did: find the key path on the SuperNode's command line and read the key. Needs
root (to start the app as `nobody`); the checks that need no root: tests/deploy/test_start_supernode.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.federation import CONNECTION, LoopbackFederation

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("no_leftover_processes"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting the ClientApp as another user needs root"),
]
PROBE_APP = REPO / "tests" / "e2e" / "key_probe_app"
APP_USER = "nobody"


def test_an_app_run_as_the_clientapp_user_cannot_read_the_node_key():
    # Prepare: folders other users may traverse (the keys stay 0600 root), one hospital isolated, one not
    root = Path(tempfile.mkdtemp(prefix="medforge-keys-"))
    root.chmod(0o755)
    fed = LoopbackFederation(root)
    try:
        fed.make_keys(["hospital-0", "hospital-1"])
        fed.keys.chmod(0o755)
        home = root / "app-home"
        home.mkdir()
        shutil.chown(home, user=APP_USER)
        fed.start_superlink()
        isolated, as_root = fed.register("hospital-0"), fed.register("hospital-1")
        for name, extra in (
            ("hospital-0", ["--clientapp-user", APP_USER, "--clientapp-home", str(home)]),
            ("hospital-1", []),
        ):
            fed.start_supernode(name, f'key="{fed.keys / name}"', check=False, extra=extra)
        fed.wait_online(2, timeout=180)
        answers_file = root / "answers.json"

        # Execute
        done = fed.run(
            "flwr",
            "run",
            PROBE_APP,
            CONNECTION,
            "--stream",
            "--run-config",
            f"results-file='{answers_file}'",
            timeout=400,
        )

        # Assert
        assert answers_file.exists(), done.stdout[-3000:] + done.stderr[-2000:]
        answers = {int(node): probe for node, probe in json.loads(answers_file.read_text()).items()}
        assert answers[isolated] == {
            "uid": 65534,
            "found_own_key_path": 1,
            "own_key_readable": 0,
            "keys_found": 2,
            "keys_readable": 0,
        }, answers
        # the same probe, app code running as root (no --clientapp-user): it reads both keys
        assert answers[as_root]["uid"] == 0 and answers[as_root]["own_key_readable"] == 1, answers
        assert answers[as_root]["keys_readable"] == 2, answers
        assert "warning: the app code runs as root" in fed.log("supernode-hospital-1.log")
    finally:
        fed.close()
        shutil.rmtree(root, ignore_errors=True)

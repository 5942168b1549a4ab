"""scripts/deploy/start_supernode.sh --clientapp-user: the app code runs as a user that cannot read
the node key, and the script refuses to start when that user could (the slow test that a ClientApp
really cannot read it: tests/e2e/test_key_isolation.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "deploy" / "start_supernode.sh"
APP_USER = "nobody"
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")


@pytest.fixture
def site():
    """A site folder other users can traverse (pytest's tmp_path is 0700): ca.pem, a 0600 key, a home."""
    folder = Path(tempfile.mkdtemp(prefix="medforge-site-"))
    folder.chmod(0o755)
    (folder / "ca.pem").write_text("not used: the script stops before it dials\n")
    key = folder / "hospital-0"
    key.write_text("private\n")
    key.chmod(0o600)
    home = folder / "app-home"
    home.mkdir()
    yield folder
    shutil.rmtree(folder)


def start(site: Path, *extra: str, as_user: str | None = None) -> subprocess.CompletedProcess:
    """The script with a node config whose data is missing: it exits at the data check at the latest."""
    command = [
        str(SCRIPT),
        "--superlink",
        "127.0.0.1:1",
        "--ca",
        str(site / "ca.pem"),
        "--key",
        str(site / "hospital-0"),
        "--node-config",
        f'hospital-id=0 task="breastmnist" data-path="{site / "missing.npz"}"',
        *extra,
    ]
    if as_user:
        command = ["setpriv", f"--reuid={as_user}", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@AS_ROOT
def test_a_key_the_app_user_can_read_is_refused(site):
    (site / "hospital-0").chmod(0o644)

    done = start(site, "--clientapp-user", APP_USER, "--clientapp-home", str(site / "app-home"))

    assert done.returncode == 2
    assert f"{site / 'hospital-0'} is readable by {APP_USER}" in done.stderr and "chmod 600" in done.stderr


@AS_ROOT
def test_a_home_the_app_user_cannot_write_is_refused(site):
    done = start(site, "--clientapp-user", APP_USER, "--clientapp-home", str(site / "app-home"))

    assert done.returncode == 2 and "is not writable by nobody" in done.stderr


@AS_ROOT
def test_with_a_private_key_the_site_check_runs_as_the_app_user(site):
    shutil.chown(site / "app-home", user=APP_USER)

    done = start(site, "--clientapp-user", APP_USER, "--clientapp-home", str(site / "app-home"))

    assert done.returncode == 1, done.stderr  # past the user checks: the data check (as nobody) failed
    assert "failed the check" in done.stderr and "warning" not in done.stderr


@AS_ROOT
def test_the_option_needs_root(site):
    os.chmod(site / "hospital-0", 0o644)  # so the unprivileged caller gets as far as the option's check

    done = start(site, "--clientapp-user", "daemon", as_user=APP_USER)

    assert done.returncode == 2 and "--clientapp-user needs root" in done.stderr


def test_without_it_the_script_warns_that_the_app_can_read_the_key(site):
    done = start(site)

    assert "warning: the app code runs as" in done.stderr and "--clientapp-user" in done.stderr

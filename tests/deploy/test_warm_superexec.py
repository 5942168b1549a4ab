"""scripts/deploy/warm_superexec.py: ClientApp tasks forked from a warm process (the slow tests with
SuperNodes: tests/e2e/test_deployment.py, whose SuperNodes run it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.superexec import run_superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "deploy" / "warm_superexec.py"
spec = importlib.util.spec_from_file_location("warm_superexec", SCRIPT)
warm_superexec = importlib.util.module_from_spec(spec)
spec.loader.exec_module(warm_superexec)


def task_spec(task_type: TaskType = TaskType.CLIENT_APP, token: str = "token-1") -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token=token,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=7,
    )


def reap(executor, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while executor.children:
        assert time.time() < deadline, f"children {executor.children} still running after {timeout} s"
        executor.reconcile()
        time.sleep(0.05)


def test_a_clientapp_task_runs_flowers_run_clientapp_in_a_forked_child(tmp_path, monkeypatch):
    # Prepare
    seen = tmp_path / "seen.json"

    def fake_run_clientapp(**kwargs):  # in the child: what it was given, and whether the parent's handlers remain
        seen.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "token": kwargs["token"],
                    "address": kwargs["runtime_api_address"],
                    "parent_handlers": len(exit_handler.registered_exit_handlers),
                    "backoff": inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"],
                }
            )
        )
        raise SystemExit(0)  # as flwr_exit ends run_clientapp

    monkeypatch.setattr(warm_superexec, "run_clientapp", fake_run_clientapp)
    exit_handler.add_exit_handler(lambda: None)  # stands in for the parent's Runtime API client
    executor = warm_superexec.ForkExecutor()

    # Execute
    try:
        result = executor.launch(task_spec(token="token-42"))
        child = next(iter(executor.children))
        reap(executor)
    finally:
        exit_handler.registered_exit_handlers.pop()

    # Assert
    assert result == LaunchResult.accepted()
    report = json.loads(seen.read_text())
    assert report["pid"] == child != os.getpid()
    assert report["token"] == "token-42" and report["address"] == "127.0.0.1:1"
    assert report["parent_handlers"] == 0
    assert report["backoff"] == warm_superexec.LOCAL_PULL_BACKOFF
    assert inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] == 1  # parent untouched


def test_other_task_types_start_as_flowers_subprocesses(monkeypatch):
    launched = []
    executor = warm_superexec.ForkExecutor()
    monkeypatch.setattr(executor.subprocess, "launch", lambda spec: launched.append(spec) or LaunchResult.accepted())

    executor.launch(task_spec(TaskType.SERVER_APP))

    assert [s.task_type for s in launched] == [TaskType.SERVER_APP] and not executor.children


def test_it_replaces_flowers_executor_through_get_executor():
    # the seam main() uses: Flower's run_superexec builds its executor with this module-level function
    assert callable(run_superexec.get_executor)
    assert isinstance(
        warm_superexec.fork_executor()(warm_superexec.ExecutorType.SUBPROCESS), warm_superexec.ForkExecutor
    )


def test_warm_up_keeps_the_libraries_and_drops_the_apps_own_modules():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('w', {str(SCRIPT)!r})\n"
        "w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)\n"
        "w.warm_up()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)

    loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own subprocess's list
    assert {"torch", "peft", "transformers", "numpy"} <= loaded
    assert not {"fl_app", "strategies"} & loaded


def test_a_process_that_started_cuda_starts_clientapps_as_subprocesses(monkeypatch):
    # forking after CUDA's start leaves the child without a usable GPU: fall back to Flower's way
    launched = []
    executor = warm_superexec.ForkExecutor()
    monkeypatch.setattr(executor.subprocess, "launch", lambda spec: launched.append(spec) or LaunchResult.accepted())
    monkeypatch.setattr(warm_superexec, "cuda_initialised", lambda: True)

    executor.launch(task_spec())

    assert [s.task_type for s in launched] == [TaskType.CLIENT_APP] and not executor.children


class FakeRun:
    fab_id, fab_version = "medforge", "0.1.0"


class FakeContext:
    node_config = {"hospital-id": 3}


def test_with_pins_an_unpinned_bundle_is_refused_before_it_is_installed(tmp_path):
    # Prepare: the site pins one bundle; Flower's pull and install stand-ins record what ran
    from fl_app.app_pins import AppNotPinned, fab_hash

    pins_file = tmp_path / "pins.txt"
    pins_file.write_text(f"{fab_hash(b'reviewed')} v1\n")
    installed = []
    pull, install = warm_superexec.pinned_only(
        warm_superexec.Pins(pins_file),
        lambda client: ("message", FakeContext(), FakeRun(), "fab"),
        lambda content, **kwargs: installed.append(content) or "installed",
    )

    # Execute
    pull("client")
    ok = install(b"reviewed", skip_prompt=True)
    with pytest.raises(AppNotPinned) as refused:
        install(b"not reviewed", skip_prompt=True)

    # Assert
    assert ok == "installed" and installed == [b"reviewed"]
    text = str(refused.value)
    assert fab_hash(b"not reviewed") in text and "hospital-id=3" in text and "medforge 0.1.0" in text


def test_with_pins_a_task_flowers_own_process_would_run_unchecked_is_refused(tmp_path, monkeypatch):
    from fl_app.app_pins import fab_hash

    pins_file = tmp_path / "pins.txt"
    pins_file.write_text(f"{fab_hash(b'reviewed')}\n")
    executor = warm_superexec.ForkExecutor(warm_superexec.Pins(pins_file))
    launched = []
    monkeypatch.setattr(executor.subprocess, "launch", lambda spec: launched.append(spec) or LaunchResult.accepted())
    monkeypatch.setattr(warm_superexec, "cuda_initialised", lambda: True)

    result = executor.launch(task_spec())

    assert result.status == "failed" and "pinned" in result.message and not launched


def test_the_pins_option_is_taken_out_of_flowers_arguments():
    argv = ["warm_superexec.py", "--insecure", "--pinned-apps", "/site/pins.txt", "--parent-pid", "1"]

    path = warm_superexec.pop_pins_option(argv)

    assert str(path) == "/site/pins.txt" and argv == ["warm_superexec.py", "--insecure", "--parent-pid", "1"]
    assert warm_superexec.pop_pins_option(["x", "--insecure"]) is None


def test_a_parent_of_another_user_counts_as_running(monkeypatch):
    # As --clientapp-user, signalling the SuperNode (root) raises PermissionError, which Flower's own
    # check reads as "gone" (the SuperExec would stop at once). The warm SuperExec's check must not.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = warm_superexec.pid_exists(os.getpid())
    gone = warm_superexec.pid_exists(dead.pid)

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)

    assert alive and not gone
    assert warm_superexec.pid_exists(1)

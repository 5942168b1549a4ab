"""A hospital's SuperExec that starts each ClientApp from a warm process: torch, PEFT and
transformers are imported once per SuperNode instead of once per message.

Flower 1.42 runs every message a SuperNode receives in a fresh `flwr-clientapp` process (both
`--isolation subprocess` and `process`: its SuperExec's only local executor starts one
subprocess per task; the warm pools in `flwr/supercore/superexec/executor/` serve Kubernetes and
other task types, not ClientApps). That process imports torch, PEFT and transformers again, ~4 s
here, before the hospital's own step. This is `flower-superexec` with one change, its executor:
after importing what the hospital's steps import, it forks per ClientApp task, and the child runs
Flower's own `run_clientapp` (pull the task, install the app bundle, load the ClientApp from the
bundle, run it, push the reply) exactly as `flwr-clientapp` would, then exits. Each message still
gets a process of its own; the app's code (`fl_app`, `strategies`) is not kept from the warm-up,
so each task loads it from the bundle the coordinator sent.

Started by `start_supernode.sh` next to `flower-supernode --isolation process` (the default;
`--fresh-clientapp` keeps Flower's own subprocess per message):

    python scripts/deploy/warm_superexec.py --insecure --runtime-api-address 127.0.0.1:9094 --parent-pid PID

The arguments are `flower-superexec`'s, plus `--pinned-apps FILE`: the site's pinned app bundles
(fl_app/app_pins.py). With it, each task's bundle is checked before it is installed or any of its
code runs; another bundle is refused, logged here, and answered to the coordinator as an error
naming its hash (results.json: reason `app-refused`). The Runtime API it polls binds 127.0.0.1,
as in Flower's subprocess mode.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.supercore import app_utils, log
from flwr.supercore.cli.flower_superexec import flower_superexec
from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime import run_clientapp as clientapp_runtime
from flwr.supernode.runtime.run_clientapp import run_clientapp

#: What the warm process imports: the hospital's steps, i.e. torch, PEFT, transformers, numpy.
WARM_MODULE = "fl_app.hospital_steps"
#: The app's own packages: dropped after the warm-up, so every task imports them from its bundle.
APP_PACKAGES = ("fl_app", "strategies")
#: First retry (s) when the task asks its SuperNode for a part of the message not stored yet. The
#: SuperNode hands out the task before it has stored the message's parts; Flower's 1 s suits a
#: process that takes seconds to start, a forked one asks within milliseconds. Doubles per retry.
LOCAL_PULL_BACKOFF = 0.1
PINS_OPTION = "--pinned-apps"


class Pins:
    """The site's pinned bundles (hash -> note) and the file they came from."""

    def __init__(self, path: Path) -> None:
        # The site's own checkout (installed), bound now: the warm-up then forgets fl_app's modules,
        # and nothing is imported while a task's bundle is about.
        from fl_app.app_pins import AppNotPinned, check_bundle, read_pins

        self.path = Path(path)
        self.hashes = read_pins(self.path)
        self.check, self.refusal = check_bundle, AppNotPinned


def pop_pins_option(argv: list[str]) -> Path | None:
    """Take `--pinned-apps FILE` out of `argv` (flower-superexec would refuse it); the file, if given."""
    for index, arg in enumerate(argv):
        if arg == PINS_OPTION:
            if index + 1 >= len(argv):
                raise SystemExit(f"warm_superexec: {PINS_OPTION} needs a file (the site's pinned app hashes)")
            path = argv[index + 1]
            del argv[index : index + 2]
            return Path(path)
        if arg.startswith(PINS_OPTION + "="):
            del argv[index]
            return Path(arg.split("=", 1)[1])
    return None


def pinned_only(
    pins: Pins, pull: Callable[..., Any], install: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Flower's `pull_task_input` and `install_from_fab`, wrapped so that a bundle the site has not
    pinned is refused before it is installed: run_clientapp then answers the coordinator with the
    refusal (an error reply) instead of running the app."""
    task: dict[str, str] = {}

    def pull_task_input(client: Any) -> Any:
        message, context, run, fab = pull(client)
        task.update(hospital=str(context.node_config.get("hospital-id", "?")), app=f"{run.fab_id} {run.fab_version}")
        return message, context, run, fab

    def install_from_fab(content: bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            pins.check(content, pins.hashes, str(pins.path), task.get("app", ""))
        except pins.refusal as error:
            log(ERROR, "warm_superexec: refused to run it: %s", error)
            raise pins.refusal(f"{error} (hospital-id={task.get('hospital', '?')})") from None
        return install(content, *args, **kwargs)

    return pull_task_input, install_from_fab


def warm_up(module: str = WARM_MODULE, app_packages: tuple[str, ...] = APP_PACKAGES) -> float:
    """Import `module` and what it imports, then forget the app's own modules; the seconds it took.

    Without the installed checkout the warm-up is skipped (each task then imports everything, as
    `flwr-clientapp` does) rather than keeping the SuperNode from serving.
    """
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except ImportError as error:
        log(WARNING, "warm_superexec: could not import %s (%s); each ClientApp imports its own", module, error)
    for name in [m for m in sys.modules if m.split(".")[0] in app_packages]:
        del sys.modules[name]
    return time.perf_counter() - started


class ForkExecutor:
    """Flower's SuperExec `Executor`: a ClientApp task runs in a child forked from this warm
    process; any other task type runs as Flower's own subprocess."""

    def __init__(self, pins: Pins | None = None) -> None:
        self.children: set[int] = set()
        self.subprocess = SubprocessExecutor()
        self.pins = pins

    def get_eligible_capacity(
        self, supported_task_types: set[TaskType], *, insecure: bool = False, root_certificates_path: str | None = None
    ) -> tuple[set[TaskType], set[str]]:
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, **_: Any) -> None:
        """No capacity gate: the SuperNode hands out one message at a time."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP or cuda_initialised():
            if self.pins is not None:  # Flower's own process would run the bundle unchecked
                log(
                    ERROR,
                    "warm_superexec: refused task %d (%s): pinned apps run only forked",
                    spec.task_id,
                    spec.task_type,
                )
                return LaunchResult.failed(f"{spec.task_type} task refused: this site runs pinned apps only, forked")
            return self.subprocess.launch(spec)  # a child forked after CUDA's start could not use the GPU
        sys.stdout.flush()  # nothing buffered may be written twice, by parent and child
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as error:
            return LaunchResult.failed(f"fork failed: {error}")
        if pid == 0:
            os._exit(_run_task(spec, self.pins))
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the tasks that ended (called by SuperExec's loop before each poll)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        """Nothing to release: a running task watches this process and stops when it exits."""


def cuda_initialised() -> bool:
    """Whether this process started CUDA (the warm-up never should: it imports, it computes nothing)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _run_task(spec: ExecutionSpec, pins: Pins | None = None) -> int:
    """In the forked child: Flower's ClientApp process for this task (only a pinned bundle, when the
    site pins); its exit code."""
    exit_handler.registered_exit_handlers.clear()  # the parent's (its Runtime API client) are not this task's
    inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] = LOCAL_PULL_BACKOFF
    if pins is not None:  # this child's copy of Flower's module: the parent keeps the originals
        clientapp_runtime.pull_task_input, clientapp_runtime.install_from_fab = pinned_only(
            pins, clientapp_runtime.pull_task_input, clientapp_runtime.install_from_fab
        )
    code = 1
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as done:  # run_clientapp ends with flwr_exit, i.e. sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as error:  # noqa: BLE001 - never return into the parent's loop
        print(f"warm_superexec: ClientApp task failed: {error!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def pid_exists(pid: int) -> bool:
    """Whether `pid` runs. Flower's check counts "not permitted to signal it" as gone, so a SuperExec
    running as --clientapp-user would stop at once beside a SuperNode running as root."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def fork_executor(pins: Pins | None = None) -> Callable[..., ForkExecutor]:
    """Stands in for Flower's `get_executor` in `run_superexec`: the local (subprocess) executor only."""

    def get_executor(executor_type: ExecutorType, *_: Any, **__: Any) -> ForkExecutor:
        if executor_type != ExecutorType.SUBPROCESS:
            raise ValueError(f"warm_superexec runs tasks locally; --executor {executor_type} is not supported")
        return ForkExecutor(pins)

    return get_executor


def main() -> None:
    pins_path = pop_pins_option(sys.argv)
    try:
        pins = Pins(pins_path) if pins_path is not None else None
    except ValueError as error:
        raise SystemExit(f"warm_superexec: {error}") from None
    if pins is not None:
        log(INFO, "warm_superexec: runs only the %d app bundle(s) pinned in %s", len(pins.hashes), pins.path)
    seconds = warm_up()
    log(INFO, "warm_superexec: imported %s in %.1f s; ClientApps fork from here", WARM_MODULE, seconds)
    if cuda_initialised():
        log(WARNING, "warm_superexec: CUDA started during the warm-up; each ClientApp runs as a fresh process")
    app_utils._pid_exists = pid_exists  # the parent watch of this process and its ClientApps
    superexec.get_executor = fork_executor(pins)  # the one seam: run_superexec builds its executor through it
    flower_superexec()


if __name__ == "__main__":
    main()

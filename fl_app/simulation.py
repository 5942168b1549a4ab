"""Run an experiment as a real Flower simulation: a private SuperLink, then `flwr run --stream`.

Each run gets its own SuperLink on a free loopback port and its own FLWR_HOME, so runs never
share state with a user's `~/.flwr`. Every process of the run (the SuperLink, SuperExec,
flwr-simulation, Ray's raylet, GCS and workers) carries a run tag in its environment; at the end,
and on SIGINT/SIGTERM, each is stopped and waited on by PID, so none outlives the run. An
interrupted run's results.json says `status: interrupted`; the adapters it received are on disk
(`received/`), and `scripts/run.py +resume=<folder>` merges and evaluates them.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import httpx
import psutil
from omegaconf import DictConfig

from fl_app.app_staging import PROJECT_ROOT, stage_flower_app
from fl_app.config import config_digest, save_experiment
from fl_app.server.results import RESULTS_FILE, read_results, write_results
from fl_app.server.status import COMPLETED, FINISHED, INTERRUPTED
from fl_app.validation import validate_experiment

CONNECTION = "medforge-local"


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for the SuperLink and the CLI: private home, no telemetry, no runtime installs."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray runs workers at niceness 15, so a hospital's training yields the CPU to every other
        # process of the run (ServerApp, SuperLink, raylet) and of the machine: run them at 0.
        RAY_worker_niceness="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # what an interrupted `scripts/run.py` exits with
RUN_TAG = "MEDFORGE_RUN_TAG"  # in the environment of every process a run starts (Ray's included)


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the run (`signal_name` says which)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


def exit_interrupted(interrupted: Interrupted, what: str, folder: Path, resume: str) -> NoReturn:
    """Say what an interrupted run (or sweep) left where, and how to resume; exit 130 (SIGINT) or 143 (SIGTERM)."""
    print(
        f"Interrupted ({interrupted.signal_name}): every process of the {what} stopped; results so far in {folder} "
        f"(status: interrupted). Resume: scripts/run.py +resume={resume}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(EXIT_CODES[interrupted.signal_name])


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries `RUN_TAG=tag` (even those re-parented to init)."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if process.environ().get(RUN_TAG) == tag:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return found


def process_tree(process: subprocess.Popen, tag: str | None = None) -> list[psutil.Process]:
    """`process`, its descendants, and (with `tag`) every process carrying the run tag."""
    tree: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(process.pid)
        tree[root.pid] = root
        tree.update({child.pid: child for child in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    if tag is not None:
        tree.update({p.pid: p for p in tagged_processes(tag)})
    tree.pop(os.getpid(), None)
    return list(tree.values())


def stop_process_group(process: subprocess.Popen, grace: float = 10.0, tag: str | None = None) -> list[str]:
    """Stop `process` and everything it started, waiting on each PID: SIGTERM to the process group
    and to every process of the tree (and of the run tag), then SIGKILL to what is left after
    `grace` seconds. Returns the command lines of processes that survived even SIGKILL (none)."""
    for _ in range(3):  # a process may start children while being stopped: look again
        tree = process_tree(process, tag)
        if not tree:
            break
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for member in tree:
                try:
                    member.send_signal(sig)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            _, tree = psutil.wait_procs(tree, timeout=wait)
            if not tree:
                break
    try:
        process.wait(timeout=10.0)  # reap the direct child
    except subprocess.TimeoutExpired:
        pass
    survivors = []
    for member in process_tree(process, tag):
        try:
            survivors.append(" ".join(member.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return survivors


@contextmanager
def local_superlink(
    log_path: Path, startup_timeout: float = 60.0, grace: Callable[[], float] = lambda: 10.0
) -> Iterator[dict[str, str]]:
    """Start a simulation-mode SuperLink on a free port; yield the env for `flwr run`; stop it.

    grace: seconds its processes (Ray's included) get after SIGTERM, asked when stopping them.
    """
    flwr_home = Path(tempfile.mkdtemp(prefix="medforge-flwr-"))
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**flower_env(flwr_home), RUN_TAG: uuid.uuid4().hex}
    command = [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        ":flwr-in-memory:",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}/health", startup_timeout, log_path)
        yield env
    finally:
        survivors = stop_process_group(process, grace=grace(), tag=env[RUN_TAG])
        shutil.rmtree(flwr_home, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"processes of the run survived SIGKILL: {survivors}")


def wait_until_healthy(
    process: subprocess.Popen, health_url: str, timeout: float, log_path: Path, verify: ssl.SSLContext | bool = True
) -> None:
    """Return once the SuperLink answers `health_url`; raise if it exits or `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}; see {log_path}.")
        try:
            if httpx.get(health_url, timeout=1.0, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not become ready within {timeout:.0f} s; see {log_path}.")


def flwr_run_command(
    cfg: DictConfig, config_path: Path, results_dir: Path, validated: str = "", app_dir: Path = PROJECT_ROOT
) -> list[str]:
    """`flwr run` for this experiment: hospitals = simulated SuperNodes, resources per hospital.

    validated: the digest of `config_path` once `validate_experiment` passed on it (the ServerApp
    then skips the repeat; see `config.validated_before`)."""
    return federation_command(
        cfg, f"config-path='{config_path}' results-dir='{results_dir}' validated='{validated}'", app_dir
    )


def federation_command(cfg: DictConfig, run_config: str, app_dir: Path = PROJECT_ROOT) -> list[str]:
    """`flwr run` on the local SuperLink with `cfg`'s federation shape (hospitals and their
    resources) and the given `--run-config` (one experiment, or a sweep's manifest).

    app_dir: the Flower app Flower packages (`app_staging.stage_flower_app`: the same files, fast)."""
    sim = cfg.simulation
    federation = f"num-supernodes={int(sim.num_hospitals)} client-resources-num-cpus={int(sim.client_cpus)} client-resources-num-gpus={float(sim.client_gpus)}"
    if sim.get("ray_cpus") is not None:  # Ray's own CPU count: fewer workers than the machine's cores
        federation += f" init-args-num-cpus={int(sim.ray_cpus)}"
    return [
        "flwr",
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--federation-config",
        federation,
        "--run-config",
        run_config,
    ]


@contextmanager
def signals_interrupt(on_signal: Callable[[], None] = lambda: None) -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while the run is under way (once:
    a second Ctrl-C does not cut short the teardown the first one started). `on_signal` runs first,
    at the moment of the signal (e.g. to record what the run was doing then)."""
    received: list[str] = []

    def handler(signum: int, _frame) -> None:
        if received:
            return
        received.append(signal.Signals(signum).name)
        on_signal()
        raise Interrupted(received[0])

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def mark_interrupted(results_dir: Path, signal_name: str, at_signal: dict | None) -> dict | None:
    """After every process of the run has stopped: results.json says `interrupted`, when, and what was done.

    at_signal: results.json as it was when the signal came (None: there was none yet). A run that
    had completed or failed by then keeps its status. Any other is `interrupted` at the stage it
    was in then, even if its ServerApp went on while the processes stopped (hospitals whose
    processes stop first look like failures to it, and it may merge and evaluate without them)."""
    results = read_results(results_dir)
    if results is None:
        return None
    if at_signal is not None and at_signal.get("status") in FINISHED:
        return results
    stage = (at_signal or results).get("stage", "start-up")
    received = sorted({r["hospital"] for r in results.get("received", [])})
    results["status"] = INTERRUPTED
    results["error"] = (
        f"interrupted by {signal_name} during {stage}; adapters received from hospitals {received} are under received/"
    )
    results["interrupted"] = {"signal": signal_name, "stage": stage, "at": time.time()}
    write_results(results_dir, results)
    return results


COMPLETION_POLL_S = 0.25  # how often the run's results.json is read for `completed`
COMPLETION_GRACE_S = 0.5  # after `completed`: time for the ServerApp's last log lines to reach the stream
COMPLETED_GRACE_S = 0.5  # after `completed`: SIGTERM to SIGKILL for the SuperLink's and Ray's processes


class CompletionWatcher(threading.Thread):
    """Stops `flwr run` as soon as `finished()` says the run's results are all written (results.json
    `completed`), instead of waiting for Flower's graceful shutdown; `local_superlink` then stops
    the SuperLink's and Ray's processes with a short grace."""

    def __init__(self, process: subprocess.Popen, finished: Callable[[], bool]) -> None:
        super().__init__(name="medforge-completion-watcher", daemon=True)
        self.process, self.finished = process, finished
        self.stopping = threading.Event()
        self.completed_at: float | None = None

    def run(self) -> None:
        while not self.stopping.wait(COMPLETION_POLL_S):
            if self.process.poll() is not None:
                return
            if self.finished():
                self.completed_at = time.time()
                if not self.stopping.wait(COMPLETION_GRACE_S):
                    stop_process_group(self.process, grace=2.0)
                return

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=30.0)


def run_completed(results_path: Path) -> bool:
    """Whether results.json exists and says `completed` (a half-written file is never seen: it is replaced atomically)."""
    try:
        return read_results(results_path.parent).get("status") == COMPLETED
    except (OSError, ValueError, AttributeError):
        return False


def stop_grace(finished: Callable[[], bool]) -> float:
    """SIGTERM-to-SIGKILL seconds for a run's SuperLink and Ray: a run whose results are all written
    (`finished()`) skips their graceful shutdown (~5 s); any other run gets the full 10 s."""
    return COMPLETED_GRACE_S if finished() else 10.0


def prepare_run(cfg: DictConfig, results_dir: Path) -> Path:
    """Validate `cfg` and write it into a new results folder; returns the config file's path."""
    validate_experiment(cfg)
    results_dir.mkdir(parents=True, exist_ok=True)
    if (results_dir / RESULTS_FILE).exists():
        raise FileExistsError(
            f"{results_dir / RESULTS_FILE} already exists; choose a new hydra.run.dir so earlier results are kept."
        )
    return save_experiment(cfg, results_dir / "config.yaml")


def stream_flwr_run(
    command: list[str], env: dict[str, str], write: Callable[[bytes], None], quiet: bool, finished: Callable[[], bool]
) -> subprocess.Popen:
    """Run `flwr run --stream`, handing each output line to `write` (and to stdout unless quiet);
    stopped early once `finished()` (see `CompletionWatcher`)."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's Ctrl-C reaches this process only; it stops the CLI itself
    )
    watcher = CompletionWatcher(process, finished)
    watcher.start()
    try:
        for line in process.stdout:
            write(line)
            if not quiet:
                sys.stdout.write(line.decode(errors="replace"))
                sys.stdout.flush()
        process.wait()
    finally:
        watcher.stop()
        stop_process_group(process, grace=5.0)
    return process


def run_simulation(cfg: DictConfig, results_dir: Path, quiet: bool = False) -> Path:
    """Validate, write the resolved config, run the Flower simulation, return the results folder.

    SIGINT/SIGTERM stop every process of the run (waited on by PID), mark results.json
    `interrupted` and raise `Interrupted`."""
    results_dir = results_dir.resolve()
    config_path = prepare_run(cfg, results_dir)
    log_path = results_dir / "flower.log"
    results_path = results_dir / RESULTS_FILE
    process = None
    at_signal: dict[str, dict | None] = {}
    try:
        finished = functools.partial(run_completed, results_path)
        grace = functools.partial(stop_grace, finished)

        def record() -> None:  # what the run was doing when the signal came
            at_signal["results"] = read_results(results_dir)

        with (
            signals_interrupt(record),
            local_superlink(log_path, grace=grace) as env,
            open(log_path, "ab") as log,
        ):
            app_dir = stage_flower_app(Path(env["FLWR_HOME"]) / "app")  # removed with the run's FLWR_HOME
            command = flwr_run_command(cfg, config_path, results_dir, config_digest(config_path), app_dir)
            process = stream_flwr_run(command, env, log.write, quiet, finished)
    except Interrupted as interrupted:
        mark_interrupted(results_dir, interrupted.signal_name, at_signal.get("results"))
        raise
    results = read_results(results_dir)
    if results is None:
        raise RuntimeError(
            f"The Flower run ended without writing {RESULTS_FILE} (flwr exit code {process.returncode}); see {log_path}."
        )
    if results["status"] != COMPLETED:
        raise RuntimeError(
            f"The experiment {results['status']}: {results.get('error', 'no error recorded')}; results so far in {results_dir}."
        )
    return results_dir

"""Run an experiment as a real Flower simulation: a private SuperLink, then `flwr run --stream`.

Each run gets its own SuperLink on a free loopback port and its own FLWR_HOME, so runs never
share state with a user's `~/.flwr`, and every process is stopped (by process group) at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from omegaconf import DictConfig

from fl_app.config import save_experiment
from fl_app.server.results import RESULTS_FILE, read_results
from fl_app.validation import validate_experiment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
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


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole process group (SuperLink, SuperExec, simulation, Ray), then SIGKILL."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def local_superlink(log_path: Path, startup_timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start a simulation-mode SuperLink on a free port; yield the env for `flwr run`; stop it."""
    flwr_home = Path(tempfile.mkdtemp(prefix="medforge-flwr-"))
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(flwr_home)
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
        stop_process_group(process)
        shutil.rmtree(flwr_home, ignore_errors=True)


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


def flwr_run_command(cfg: DictConfig, config_path: Path, results_dir: Path) -> list[str]:
    """`flwr run` for this experiment: hospitals = simulated SuperNodes, resources per hospital."""
    sim = cfg.simulation
    federation = f"num-supernodes={int(sim.num_hospitals)} client-resources-num-cpus={int(sim.client_cpus)} client-resources-num-gpus={float(sim.client_gpus)}"
    if sim.get("ray_cpus") is not None:  # Ray's own CPU count: fewer workers than the machine's cores
        federation += f" init-args-num-cpus={int(sim.ray_cpus)}"
    run_config = f"config-path='{config_path}' results-dir='{results_dir}'"
    return [
        "flwr",
        "run",
        str(PROJECT_ROOT),
        CONNECTION,
        "--stream",
        "--federation-config",
        federation,
        "--run-config",
        run_config,
    ]


def run_simulation(cfg: DictConfig, results_dir: Path, quiet: bool = False) -> Path:
    """Validate, write the resolved config, run the Flower simulation, return the results folder."""
    validate_experiment(cfg)
    results_dir = results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    if (results_dir / RESULTS_FILE).exists():
        raise FileExistsError(
            f"{results_dir / RESULTS_FILE} already exists; choose a new hydra.run.dir so earlier results are kept."
        )
    config_path = save_experiment(cfg, results_dir / "config.yaml")
    log_path = results_dir / "flower.log"
    with local_superlink(log_path) as env:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                flwr_run_command(cfg, config_path, results_dir),
                env=env,
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for line in process.stdout:
                log.write(line)
                if not quiet:
                    sys.stdout.write(line.decode(errors="replace"))
                    sys.stdout.flush()
            process.wait()
    results = read_results(results_dir)
    if results is None:
        raise RuntimeError(
            f"The Flower run ended without writing {RESULTS_FILE} (flwr exit code {process.returncode}); see {log_path}."
        )
    if results["status"] != "completed":
        raise RuntimeError(
            f"The experiment {results['status']}: {results.get('error', 'no error recorded')}; results so far in {results_dir}."
        )
    return results_dir

"""A federation on loopback with TLS and SuperNode authentication, started the way the README's
Deployment section says (scripts/deploy/), with every process owned by the test and stopped by PID.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

from fl_app.simulation import flower_env, free_port, stop_process_group, wait_until_healthy
from tests.conftest import REPO

DEPLOY = REPO / "scripts" / "deploy"
CONNECTION = "medforge-tls"


class LoopbackFederation:
    """Keys, one SuperLink and any number of SuperNodes under `root`; `close()` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.port = free_port()
        self.fleet_port: int | None = None  # with start_fleet_proxy(): the only port SuperNodes dial
        self.processes: list[subprocess.Popen] = []
        self.env_home = root / "flwr-home"
        self.env = {**flower_env(self.env_home), "PYTHONPATH": str(REPO)}
        self.superlink: subprocess.Popen | None = None
        self.database = ":flwr-in-memory:"

    def run(self, *command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(c) for c in command], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def make_keys(self, hospitals: list[str]) -> None:
        """CA, SuperLink certificate for 127.0.0.1, one key pair per hospital (scripts/deploy/keys.py)."""
        for args in (["ca"], ["superlink", "--host", "127.0.0.1"], ["hospital", *hospitals]):
            done = self.run(sys.executable, DEPLOY / "keys.py", "--out", self.keys, *args)
            assert done.returncode == 0, done.stderr

    def start(self, command: list[str | Path], log_name: str) -> subprocess.Popen:
        """A process in its own session (so its children stop with it), logging to root/<log_name>."""
        with open(self.root / log_name, "wb") as log:
            process = subprocess.Popen(
                [str(c) for c in command],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_superlink(self, database: str = ":flwr-in-memory:") -> None:
        """start_superlink.sh on loopback (database: a file keeps registrations across a restart)."""
        self.database = database
        self.superlink = self.start(
            [
                DEPLOY / "start_superlink.sh",
                "--keys",
                self.keys,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                database,
            ],
            "superlink.log",
        )
        tls = ssl.create_default_context(cafile=str(self.keys / "ca.pem"))
        wait_until_healthy(
            self.superlink, f"https://127.0.0.1:{self.port}/health", 60, self.root / "superlink.log", verify=tls
        )
        config = self.env_home / "config.toml"
        if not config.exists() or f"[superlink.{CONNECTION}]" not in config.read_text():
            done = self.run(DEPLOY / "add_connection.sh", CONNECTION, f"127.0.0.1:{self.port}", self.keys / "ca.pem")
            assert done.returncode == 0, done.stderr

    def restart_superlink(self) -> float:
        """Stop the SuperLink (SIGTERM to it and what it started, waited by PID), start it again on the
        same port and database; the seconds the stop took."""
        started = time.monotonic()
        stop_process_group(self.superlink, grace=120)
        stopped_after = time.monotonic() - started
        (self.root / "superlink.log").rename(self.root / f"superlink-{len(self.processes)}.log")
        self.start_superlink(self.database)
        return stopped_after

    def start_fleet_proxy(self) -> None:
        """scripts/deploy/fleet_proxy.py in front of the SuperLink: SuperNodes dial it, not the SuperLink."""
        self.fleet_port = free_port()
        process = self.start(
            [
                sys.executable,
                DEPLOY / "fleet_proxy.py",
                "--listen",
                f"127.0.0.1:{self.fleet_port}",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--keys",
                self.keys,
            ],
            "fleet-proxy.log",
        )
        tls = ssl.create_default_context(cafile=str(self.keys / "ca.pem"))
        wait_until_healthy(
            process, f"https://127.0.0.1:{self.fleet_port}/health", 60, self.root / "fleet-proxy.log", verify=tls
        )

    def register(self, hospital: str) -> int:
        """Register the hospital's public key; the node id the SuperLink gave it."""
        done = self.run("flwr", "supernode", "register", self.keys / f"{hospital}.pub", CONNECTION)
        assert done.returncode == 0 and "registered successfully" in done.stdout, done.stdout + done.stderr
        return int(re.search(r"SuperNode (\d+) registered", done.stdout).group(1))

    def start_supernode(
        self,
        hospital: str,
        node_config: str,
        ca: bool = True,
        max_wait: int = 60,
        check: bool = True,
        fresh_clientapp: bool = False,
        pinned_apps: Path | None = None,
        extra: list[str] | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen:
        """A hospital's SuperNode via start_supernode.sh (check=False: --skip-check, start with bad data;
        fresh_clientapp: Flower's own process per message instead of warm_superexec.py's forks;
        pinned_apps: the site's pin file; extra: more start_supernode.sh options), or, with ca=False,
        flower-supernode without the CA."""
        port = str(free_port())
        if ca:
            command = [
                DEPLOY / "start_supernode.sh",
                "--superlink",
                f"127.0.0.1:{self.fleet_port or self.port}",
                "--ca",
                self.keys / "ca.pem",
                "--key",
                self.keys / hospital,
                "--node-config",
                node_config,
                "--port",
                port,
                "--max-wait-time",
                str(max_wait),
                "--threads",
                "1",
                *([] if check else ["--skip-check"]),
                *(["--fresh-clientapp"] if fresh_clientapp else []),
                *(["--pinned-apps", pinned_apps] if pinned_apps else []),
                *(extra or []),
            ]
        else:
            command = [
                "flower-supernode",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--auth-supernode-private-key",
                self.keys / hospital,
                "--node-config",
                node_config,
                "--port",
                port,
                "--max-wait-time",
                str(max_wait),
            ]
        return self.start(command, log_name or f"supernode-{hospital}.log")

    def online_nodes(self) -> int:
        done = self.run("flwr", "supernode", "list", CONNECTION, "--format", "json")
        listing = json.loads(done.stdout[done.stdout.index("{") :])
        return sum(node["status"] == "online" for node in listing["nodes"])

    def wait_online(self, count: int, timeout: float = 60) -> None:
        """Until exactly `count` SuperNodes are online (polls the Control API; bounded by `timeout`)."""
        deadline = time.time() + timeout
        while (online := self.online_nodes()) != count:
            assert time.time() < deadline, (
                f"{online} SuperNodes online after {timeout:.0f} s, expected {count}; logs in {self.root}"
            )
            time.sleep(1.0)

    def flwr_run(self, run_config: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return self.run("flwr", "run", REPO, CONNECTION, "--stream", "--run-config", run_config, timeout=timeout)

    def log(self, name: str) -> str:
        return (self.root / name).read_text(errors="replace")

    def stop(self, process: subprocess.Popen) -> None:
        stop_process_group(process)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process_group(process)

"""The threat model's test: behind scripts/deploy/fleet_proxy.py, a client holding only ca.pem can
neither start a run nor register a key (nor list runs), while hospitals' SuperNodes connect through
it and the coordinator's run completes."""

from __future__ import annotations

import time

import pytest

from fl_app.data.demo_sites import write_demo_npz
from fl_app.server.results import read_results
from fl_app.server.status import COMPLETED, INTERRUPTED
from tests.conftest import REPO, TINY_SITE
from tests.e2e.federation import CONNECTION, DEPLOY, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

OUTSIDER = "outsider"  # a flwr connection through the proxy with the CA certificate alone


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """SuperLink on loopback, the Fleet-only proxy in front, two hospitals through the proxy."""
    root = tmp_path_factory.mktemp("fleet-proxy")
    fed = LoopbackFederation(root)
    try:
        fed.make_keys(["hospital-0", "hospital-1", "intruder"])
        fed.start_superlink()
        fed.start_fleet_proxy()
        done = fed.run(DEPLOY / "add_connection.sh", OUTSIDER, f"127.0.0.1:{fed.fleet_port}", fed.keys / "ca.pem")
        assert done.returncode == 0, done.stderr
        for hospital_id, flag in enumerate(["breastmnist", "pneumoniamnist"]):
            write_demo_npz(root / f"{flag}.npz", flag, n_train=48, n_eval=24)
            fed.register(f"hospital-{hospital_id}")
            fed.start_supernode(
                f"hospital-{hospital_id}", f'hospital-id={hospital_id} task="{flag}" data-path="{root / f"{flag}.npz"}"'
            )
        fed.wait_online(2)
        yield fed
    finally:
        fed.close()


def test_a_client_with_the_ca_alone_can_neither_start_a_run_nor_register_a_key(guarded):
    started = guarded.run("flwr", "run", REPO, OUTSIDER, "--run-config", "strategy='one_shot'", timeout=180)
    registered = guarded.run("flwr", "supernode", "register", guarded.keys / "intruder.pub", OUTSIDER)
    listed = guarded.run("flwr", "list", OUTSIDER)

    for done in (started, registered, listed):
        output = done.stdout + done.stderr
        assert done.returncode != 0 and ("403" in output or "Forbidden" in output), output[-2000:]
    runs = guarded.run("flwr", "list", CONNECTION, "--format", "json")  # the coordinator, on loopback
    assert runs.returncode == 0 and '"run-id"' not in runs.stdout  # no run was started
    nodes = guarded.run("flwr", "supernode", "list", CONNECTION, "--format", "json")
    assert nodes.stdout.count('"node-id"') == 2  # the intruder's key was not registered


def test_the_coordinators_run_still_works_through_the_proxy(guarded):
    results_dir = guarded.root / "one-shot"
    overrides = " ".join([*TINY_SITE, "train.local_epochs=1", "strategy.min_hospitals=2", "simulation.num_hospitals=2"])

    done = guarded.flwr_run(f"data='site' strategy='one_shot' results-dir='{results_dir}' overrides='{overrides}'")

    results = read_results(results_dir)
    assert results is not None and results["status"] == "completed", done.stdout[-3000:]
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "merged"]


def wait_for(condition, timeout: float, what: str, root) -> None:
    """Poll `condition` every second until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s; logs in {root}"
        time.sleep(1.0)


def test_hospitals_ride_through_a_superlink_restart_behind_the_proxy(tmp_path):
    # Prepare: a SuperLink keeping its registrations on disk, the proxy, two hospitals through it
    fed = LoopbackFederation(tmp_path)
    try:
        fed.make_keys(["hospital-0", "hospital-1"])
        fed.start_superlink(database=str(tmp_path / "superlink.db"))
        fed.start_fleet_proxy()
        supernodes = []
        for hospital_id, flag in enumerate(["breastmnist", "pneumoniamnist"]):
            write_demo_npz(tmp_path / f"{flag}.npz", flag, n_train=48, n_eval=24)
            fed.register(f"hospital-{hospital_id}")
            config = f'hospital-id={hospital_id} task="{flag}" data-path="{tmp_path / f"{flag}.npz"}"'
            supernodes.append(fed.start_supernode(f"hospital-{hospital_id}", config, max_wait=600))
        fed.wait_online(2, timeout=180)
        overrides = " ".join(
            [*TINY_SITE, "train.local_epochs=1", "strategy.min_hospitals=2", "simulation.num_hospitals=2"]
        )
        first = tmp_path / "under-way"
        stream = fed.start(
            ["flwr", "run", REPO, CONNECTION, "--stream", "--run-config"]
            + [f"data='site' strategy='fedavg' rounds=30 results-dir='{first}' overrides='{overrides}'"],
            "flwr-run-under-way.log",
        )
        wait_for(
            lambda: "1" in ((read_results(first) or {}).get("train_metrics") or {}), 300, "round 1 trained", tmp_path
        )

        # Execute: restart the SuperLink mid-federation; nothing is done at the hospitals
        stop_seconds = fed.restart_superlink()
        wait_for(
            lambda: stream.poll() is not None, 180, "the streaming `flwr run` of the run under way ended", tmp_path
        )
        fed.wait_online(2, timeout=240)  # Flower's retry backoff tops out at 20 s, the heartbeat at 30 s
        second = tmp_path / "after-restart"
        done = fed.flwr_run(f"data='site' strategy='one_shot' results-dir='{second}' overrides='{overrides}'")

        # Assert
        interrupted = read_results(first)
        assert interrupted["status"] == INTERRUPTED, interrupted.get("error")
        assert interrupted["error"].startswith("the SuperLink stopped during train"), interrupted["error"]
        results = read_results(second)
        assert results is not None and results["status"] == COMPLETED, done.stdout[-3000:]
        assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "merged"]
        assert all(h.get("data_fingerprint") for h in results["hospitals"])  # the same nodes and data as before:
        assert "identity_changes" not in results  # nothing to report
        assert all(node.poll() is None for node in supernodes), "a SuperNode exited: it did not ride through"
        assert stop_seconds < 30, f"stopping the SuperLink took {stop_seconds:.0f} s"
    finally:
        fed.close()

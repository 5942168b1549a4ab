"""The threat model's test: behind scripts/deploy/fleet_proxy.py, a client holding only ca.pem can
neither start a run nor register a key (nor list runs), while hospitals' SuperNodes connect through
it and the coordinator's run completes."""

from __future__ import annotations

import pytest

from fl_app.data.demo_sites import write_demo_npz
from fl_app.server.results import read_results
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

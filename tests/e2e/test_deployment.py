"""A real deployment on loopback: SuperLink with TLS and SuperNode authentication, one SuperNode
per hospital reading its own data (two .npz files and one image folder), `flwr run` against it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from fl_app.data.demo_sites import write_demo_image_folder, write_demo_npz
from fl_app.server.results import read_results
from tests.conftest import REPO, TINY_SITE
from tests.e2e.federation import CONNECTION, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

SITES = {  # hospital key name -> (hospital id, task, data file or folder under the test's data folder)
    "hospital-0": (0, "breastmnist", "breastmnist.npz"),
    "hospital-1": (1, "pneumoniamnist", "pneumoniamnist.npz"),
    "hospital-2": (2, "chest", "chest"),
}
CHEST_CLASSES = ["normal", "pneumonia"]


def node_config(hospital_id: int, task: str, path) -> str:
    return f'hospital-id={hospital_id} task="{task}" data-path="{path}"'


def run_config(results_dir, *extra: str) -> str:
    overrides = [
        *TINY_SITE,
        "train.local_epochs=1",
        f"+data.tasks.chest.classes=[{','.join(CHEST_CLASSES)}]",
        "strategy.min_hospitals=3",
        *extra,
    ]
    return f"data='site' results-dir='{results_dir}' overrides='{' '.join(overrides)}'"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Keys for 5 hospitals (4 registered), the SuperLink and the 3 hospitals' SuperNodes, all online."""
    root = tmp_path_factory.mktemp("deployment")
    data = root / "sites"
    write_demo_npz(data / "breastmnist.npz", "breastmnist", n_train=64, n_eval=32)
    write_demo_npz(data / "pneumoniamnist.npz", "pneumoniamnist", n_train=64, n_eval=32)
    write_demo_image_folder(data / "chest", CHEST_CLASSES, n_images=60)
    fed = LoopbackFederation(root)
    try:
        fed.make_keys([*SITES, "hospital-3", "rogue", "unregistered"])
        fed.start_superlink()
        fed.node_ids = {}
        for name, (hospital_id, task, path) in SITES.items():
            fed.node_ids[hospital_id] = fed.register(name)
            fed.start_supernode(name, node_config(hospital_id, task, data / path))
        fed.node_ids[3] = fed.register("hospital-3")
        fed.rogue_node = fed.register("rogue")
        fed.wait_online(3)
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="module")
def one_shot_run(federation):
    """One-shot merge with a 4th hospital whose data path is missing (it fails; the run goes on)."""
    broken = federation.start_supernode(
        "hospital-3", node_config(3, "breastmnist", federation.root / "no-such-file.npz"), check=False
    )
    try:
        federation.wait_online(4)
        results_dir = federation.root / "one-shot"
        done = federation.flwr_run(run_config(results_dir, "strategy=one_shot"))
    finally:
        federation.stop(broken)
    federation.wait_online(3)
    return read_results(results_dir), done


def test_one_shot_merge_completes_over_tls_with_site_data(one_shot_run):
    results, done = one_shot_run

    assert results is not None and results["status"] == "completed", done.stdout[-3000:]
    assert results["scenario"] == "site" and results["data_source"] == "synthetic"  # the demo sites say so
    assert [(h["id"], h["task"], h["data_source"]) for h in results["hospitals"]] == [
        (0, "breastmnist", "synthetic"),
        (1, "pneumoniamnist", "synthetic"),
        (2, "chest", "synthetic"),
    ]
    assert [v["name"] for v in results["versions"]] == ["hospital-0", "hospital-1", "hospital-2", "merged"]
    assert set(results["versions"][-1]["per_task"]) == {"breastmnist", "pneumoniamnist", "chest"}
    per_hospital = results["communication"]["per_hospital"]
    assert all(per_hospital[h]["upload_bytes"] > 1000 for h in ("0", "1", "2"))
    assert per_hospital["3"]["upload_bytes"] < 1000  # the failing hospital sent its error, no adapter


def test_missing_data_path_is_reported_by_the_run(one_shot_run):
    results, done = one_shot_run

    failures = [f for f in results["failures"] if f["hospital_id"] == 3]

    assert {f["phase"] for f in failures} == {"train", "evaluate"}
    assert all("no-such-file.npz does not exist at this site" in f["error"] for f in failures)
    streamed = done.stdout  # the coordinator sees it in `flwr run --stream`, not only in results.json
    assert "train round 1: hospital 3 (node" in streamed and "no-such-file.npz does not exist" in streamed


def test_a_site_whose_data_fails_the_check_does_not_start(federation):
    node = federation.start_supernode("hospital-3", node_config(3, "breastmnist", federation.root / "missing.npz"))

    code = node.wait(timeout=120)

    log = federation.log("supernode-hospital-3.log")
    assert code == 1 and "check_site: ERROR: data-path=" in log and "missing.npz does not exist" in log
    assert "pass --skip-check" in log


def test_fedavg_two_rounds_completes(federation, one_shot_run):
    results_dir = federation.root / "fedavg"

    done = federation.flwr_run(run_config(results_dir, "strategy=fedavg", "strategy.rounds=2"))

    results = read_results(results_dir)
    assert results is not None and results["status"] == "completed", done.stdout[-3000:]
    assert [v["name"] for v in results["versions"]] == ["fedavg-round-1", "fedavg-round-2"]
    assert results["communication"]["rounds"] == 2 and results["failures"] == []
    # start_supernode.sh's default: every message answered by a ClientApp forked from the warm SuperExec
    assert all("ClientApps fork from here" in federation.log(f"supernode-{name}.log") for name in SITES)


def test_unregistered_key_is_refused(federation):
    node = federation.start_supernode(
        "unregistered", node_config(9, "breastmnist", "/nowhere.npz"), max_wait=15, check=False
    )

    code = node.wait(timeout=90)

    assert code != 0
    log = federation.log("supernode-unregistered.log")
    assert "Failed to activate SuperNode" in log and "unregistered.pub is not registered" in log


def test_a_second_start_with_an_online_hospitals_key_names_both_causes(federation):
    # Flower refuses it with the same "Failed to activate SuperNode" as an unregistered key
    node = federation.start_supernode(
        "hospital-0",
        node_config(0, "breastmnist", "/nowhere.npz"),
        max_wait=15,
        check=False,
        log_name="supernode-hospital-0-again.log",
    )

    code = node.wait(timeout=90)

    assert code != 0
    log = federation.log("supernode-hospital-0-again.log")
    assert "Failed to activate SuperNode" in log and "already online" in log and "flwr supernode list" in log


def test_supernode_without_the_ca_certificate_cannot_connect(federation):
    node = federation.start_supernode(
        "hospital-3", node_config(3, "breastmnist", "/nowhere.npz"), ca=False, max_wait=15
    )

    code = node.wait(timeout=90)

    assert code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.log("supernode-hospital-3.log")


def test_medforge_progressive_completes_with_an_image_folder_task(federation, one_shot_run):
    results_dir = federation.root / "medforge"
    small = [
        "strategy=medforge",
        "strategy.methods=[fusion]",
        "strategy.baselines=[]",
        "strategy.search.budget=4",
        "strategy.calibration.ipc=2",
        "strategy.calibration.iterations=3",
    ]

    done = federation.flwr_run(run_config(results_dir, *small))

    results = read_results(results_dir)
    assert results is not None and results["status"] == "completed", done.stdout[-3000:]
    assert {h["task"] for h in results["hospitals"]} == {"breastmnist", "pneumoniamnist", "chest"}
    assert any(v["kind"] != "hospital" for v in results["versions"]) and results["failures"] == []


def binding(federation) -> str:
    """The coordinator's node -> hospital map, as a Hydra override."""
    return "hospital_nodes={" + ",".join(f"{node}:{hospital}" for hospital, node in federation.node_ids.items()) + "}"


def test_fedavg_goes_on_when_a_site_dies_and_refuses_an_impostor(federation):
    """Hospital 3's SuperNode is killed (SIGKILL, by PID) mid-round 1, and a registered 'rogue' node
    claims hospital 0: round 2 runs with the sites left, the dead one is named, the impostor is
    refused and never evaluated."""
    data = federation.root / "sites"
    dying = federation.start_supernode("hospital-3", node_config(3, "breastmnist", data / "breastmnist.npz"))
    # the impostor runs Flower's own process per message (--fresh-clientapp): its refused reply shows that mode still answers
    rogue = federation.start_supernode(
        "rogue", node_config(0, "breastmnist", data / "breastmnist.npz"), fresh_clientapp=True
    )
    results_dir = federation.root / "fedavg-faults"
    try:
        federation.wait_online(5)
        run = federation.start(
            [
                "flwr",
                "run",
                REPO,
                CONNECTION,
                "--stream",
                "--run-config",
                run_config(
                    results_dir,
                    "strategy=fedavg",
                    "strategy.rounds=2",
                    "strategy.train_timeout_s=120",
                    "strategy.evaluate_timeout_s=120",
                    "simulation.num_hospitals=5",
                    "simulation.slow_hospitals={3:300}",
                    binding(federation),
                ),
            ],
            "fedavg-faults.log",
        )
        deadline = time.time() + 300
        while (read_results(results_dir) or {}).get("stage") != "train":
            assert time.time() < deadline and run.poll() is None, federation.log("fedavg-faults.log")[-3000:]
            time.sleep(1.0)
        time.sleep(5.0)  # hospital 3 is sleeping in its round-1 ClientApp
        os.killpg(dying.pid, signal.SIGKILL)
        dying.wait(timeout=30)
        run.wait(timeout=600)
    finally:
        federation.stop(dying)
        federation.stop(rogue)

    results = read_results(results_dir)
    assert results["status"] == "completed", federation.log("fedavg-faults.log")[-3000:]
    assert [v["name"] for v in results["versions"]] == ["fedavg-round-1", "fedavg-round-2"]
    dead = [f for f in results["failures"] if f["node_id"] == federation.node_ids[3]]
    assert dead and all(f["hospital_id"] == 3 and f["reason"] in ("unavailable", "timeout") for f in dead)
    refused = [f for f in results["failures"] if f["node_id"] == federation.rogue_node]
    assert [(f["hospital_id"], f["phase"], f["reason"]) for f in refused] == [(0, "train", "rejected")]
    assert results["versions"][-1]["per_task"]["breastmnist"]["hospitals"] == 1  # the impostor's scores never pooled
    assert str(federation.rogue_node) not in json.dumps(results["evaluation_traffic"])
    per_hospital = results["communication"]["per_hospital"]
    assert per_hospital["3"]["download_bytes"] > 0  # the dead site's traffic is filed under its hospital id
    assert set(per_hospital) == {"0", "1", "2", "3", f"node-{federation.rogue_node}"}  # never under hospital 0


def test_flwr_stop_leaves_results_interrupted_with_the_adapters_received(federation):
    """`flwr stop` while hospital 2 is still training: results.json must not stay `running`."""
    results_dir = federation.root / "stopped"
    run = federation.start(
        [
            "flwr",
            "run",
            REPO,
            CONNECTION,
            "--stream",
            "--run-config",
            run_config(results_dir, "strategy=fedavg", "strategy.rounds=2", "simulation.slow_hospitals={2:600}"),
        ],
        "stopped.log",
    )
    try:
        deadline = time.time() + 300
        while len((read_results(results_dir) or {}).get("received", [])) < 2:
            assert time.time() < deadline and run.poll() is None, federation.log("stopped.log")[-3000:]
            time.sleep(1.0)
        run_id = re.search(r"Successfully started run (\d+)", federation.log("stopped.log")).group(1)

        stopped = federation.run("flwr", "stop", run_id, CONNECTION)

        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        while (read_results(results_dir) or {}).get("status") == "running":
            assert time.time() < deadline + 120, "results.json still says running after flwr stop"
            time.sleep(1.0)
    finally:
        federation.stop(run)
    results = read_results(results_dir)
    assert results["status"] == "interrupted", results.get("error")
    assert sorted(r["hospital"] for r in results["received"]) == [0, 1]
    assert all((results_dir / r["adapter"] / "adapter_model.safetensors").is_file() for r in results["received"])

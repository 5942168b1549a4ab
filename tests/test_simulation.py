"""Hospitals' CPU and GPU shares reach Flower's Ray backend; a hospital trains where Ray put it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fl_app.simulation import flower_env, flwr_run_command
from fl_app.training import pick_device
from fl_app.validation import validate_experiment


def test_client_resources_become_the_federation_config(tiny_experiment):
    cfg = tiny_experiment("simulation.num_hospitals=8", "simulation.client_cpus=2", "simulation.client_gpus=0.25")

    command = flwr_run_command(cfg, Path("/r/config.yaml"), Path("/r"))

    federation = command[command.index("--federation-config") + 1]
    assert federation == "num-supernodes=8 client-resources-num-cpus=2 client-resources-num-gpus=0.25"


def test_ray_cpus_limits_the_local_ray_and_is_refused_on_a_cluster(tiny_experiment, monkeypatch):
    cfg = tiny_experiment("simulation.ray_cpus=1")

    command = flwr_run_command(cfg, Path("/r/config.yaml"), Path("/r"))

    assert command[command.index("--federation-config") + 1].endswith(" init-args-num-cpus=1")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ValueError, match="simulation.ray_cpus=1 sizes a local Ray"):
        validate_experiment(cfg)


def fake_ray(gpu_ids: list[str] | None):
    """A stand-in for the `ray` module as a worker (gpu_ids given) or a driver (None) sees it."""
    mode = 0 if gpu_ids is None else 1
    context = SimpleNamespace(worker=SimpleNamespace(mode=mode), get_accelerator_ids=lambda: {"GPU": gpu_ids or []})
    return SimpleNamespace(is_initialized=lambda: True, WORKER_MODE=1, get_runtime_context=lambda: context)


@pytest.mark.parametrize(
    ("gpu_ids", "device"),
    [(["0"], "cuda"), ([], "cpu"), (None, "cuda")],
    ids=["worker given a GPU", "worker given none", "not a Ray worker"],
)
def test_a_hospital_uses_a_gpu_only_where_ray_assigned_one(monkeypatch, gpu_ids, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "ray", fake_ray(gpu_ids))

    assert pick_device().type == device


def test_cpu_only_machines_train_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    assert pick_device().type == "cpu"


def test_hospital_workers_run_at_normal_priority(tmp_path):
    assert flower_env(tmp_path)["RAY_worker_niceness"] == "0"  # Ray's default, 15, starves them on a busy machine


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_the_run_is_stopped_once_results_json_says_completed(tmp_path):
    import time

    from fl_app.server.results import write_json_atomic
    from fl_app.simulation import COMPLETION_GRACE_S, CompletionWatcher, run_completed

    process = _sleeper()  # stands in for `flwr run`, which lingers in Flower's graceful shutdown
    watcher = CompletionWatcher(process, lambda: run_completed(tmp_path / "results.json"))
    watcher.start()
    try:
        write_json_atomic(tmp_path / "results.json", {"status": "running"})
        time.sleep(1.0)
        assert process.poll() is None  # still running: not completed yet
        write_json_atomic(tmp_path / "results.json", {"status": "completed"})

        process.wait(timeout=COMPLETION_GRACE_S + 10)

        assert watcher.completed_at is not None
    finally:
        watcher.stop()
        process.kill()
        process.wait()


def test_a_failed_run_is_left_to_end_on_its_own(tmp_path):
    import time

    from fl_app.server.results import write_json_atomic
    from fl_app.simulation import CompletionWatcher, run_completed

    process = _sleeper()
    write_json_atomic(tmp_path / "results.json", {"status": "failed"})
    watcher = CompletionWatcher(process, lambda: run_completed(tmp_path / "results.json"))
    watcher.start()
    try:
        time.sleep(1.5)

        assert process.poll() is None and watcher.completed_at is None
    finally:
        watcher.stop()
        process.kill()
        process.wait()


def test_the_validated_digest_reaches_the_server_app(tiny_experiment):
    command = flwr_run_command(tiny_experiment(), Path("/r/config.yaml"), Path("/r"), validated="abc123")

    assert "validated='abc123'" in command[command.index("--run-config") + 1]


def test_a_completed_run_gets_a_short_grace_and_any_other_the_full_one(tmp_path, monkeypatch):
    import fl_app.simulation as simulation
    from fl_app.server.results import write_json_atomic

    graces = []
    monkeypatch.setattr(simulation.subprocess, "Popen", lambda *a, **k: SimpleNamespace(pid=0))
    monkeypatch.setattr(simulation, "wait_until_healthy", lambda *a, **k: None)
    monkeypatch.setattr(simulation, "stop_process_group", lambda process, grace, tag: graces.append(grace) or [])
    results = tmp_path / "results.json"

    for status in ("failed", "completed"):
        write_json_atomic(results, {"status": status})
        with simulation.local_superlink(
            tmp_path / "superlink.log", grace=lambda: simulation.stop_grace(lambda: simulation.run_completed(results))
        ):
            pass

    assert graces == [10.0, simulation.COMPLETED_GRACE_S]


def test_a_run_under_way_at_the_signal_is_interrupted_at_the_stage_it_was_in_then(tmp_path):
    from fl_app.server.results import read_results, write_json_atomic
    from fl_app.simulation import mark_interrupted

    at_signal = {"status": "running", "stage": "train", "received": []}
    # while its processes stopped, the ServerApp took the dying hospitals for failures and finished
    write_json_atomic(
        tmp_path / "results.json", {"status": "completed", "stage": "done", "received": [{"hospital": 0}]}
    )

    mark_interrupted(tmp_path, "SIGINT", at_signal)

    results = read_results(tmp_path)
    assert results["status"] == "interrupted" and results["interrupted"]["stage"] == "train"
    assert "hospitals [0]" in results["error"]


def test_a_run_that_had_finished_before_the_signal_keeps_its_status(tmp_path):
    from fl_app.server.results import read_results, write_json_atomic
    from fl_app.simulation import mark_interrupted

    for status in ("completed", "failed"):
        write_json_atomic(tmp_path / "results.json", {"status": status, "stage": "done"})

        mark_interrupted(tmp_path, "SIGTERM", {"status": status, "stage": "done"})

        assert read_results(tmp_path)["status"] == status


def test_a_run_that_started_after_the_signal_is_interrupted_too(tmp_path):
    from fl_app.server.results import read_results, write_json_atomic
    from fl_app.simulation import mark_interrupted

    write_json_atomic(tmp_path / "results.json", {"status": "running", "stage": "waiting for hospitals"})

    mark_interrupted(tmp_path, "SIGINT", None)

    assert read_results(tmp_path)["interrupted"]["stage"] == "waiting for hospitals"

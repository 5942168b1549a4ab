"""Synthetic results.json dicts shaped like the ServerApp writes them, for the report's unit tests."""

from __future__ import annotations

from typing import Any

TASKS = ["breastmnist", "bloodmnist"]
ADAPTER_BYTES = 1000  # upload per hospital per round
INSTRUCTION_BYTES = 100  # download per hospital per round


def version(
    name: str, kind: str, accs: dict[str, float], aucs: dict[str, float] | None = None, **details: Any
) -> dict[str, Any]:
    aucs = aucs or {t: a - 0.1 for t, a in accs.items()}
    per_task = {t: {"acc": accs[t], "auc": aucs[t], "n_test": 10, "hospitals": 1} for t in accs}
    return {
        "name": name,
        "kind": kind,
        "adapter": f"adapters/{name}",
        "r": 4,
        "lora_alpha": 16.0,
        **details,
        "per_task": per_task,
        "mean_acc": sum(accs.values()) / len(accs),
        "mean_auc": sum(aucs.values()) / len(aucs),
    }


def communication(rounds: int, hospitals: int = 2) -> dict[str, Any]:
    per_round = {
        str(k): {"upload_bytes": ADAPTER_BYTES, "download_bytes": INSTRUCTION_BYTES} for k in range(1, rounds + 1)
    }
    per_hospital = {
        str(h): {
            "upload_bytes": ADAPTER_BYTES * rounds,
            "download_bytes": INSTRUCTION_BYTES * rounds,
            "per_round": per_round,
        }
        for h in range(hospitals)
    }
    return {
        "upload_bytes": ADAPTER_BYTES * rounds * hospitals,
        "download_bytes": INSTRUCTION_BYTES * rounds * hospitals,
        "rounds": rounds,
        "per_hospital": per_hospital,
    }


def hospital_version(hospital: int, task: str, own_acc: float, n_test: int, other_acc: float = 0.1) -> dict[str, Any]:
    entry = version(
        f"hospital-{hospital}",
        "hospital",
        {t: (own_acc if t == task else other_acc) for t in TASKS},
        hospital=hospital,
        task=task,
    )
    entry["per_hospital"] = {
        str(h): {
            "task": t,
            "acc": own_acc if h == hospital else other_acc,
            "auc": (own_acc - 0.1) if h == hospital else None,
            "n_test": n,
        }
        for h, t, n in ((0, TASKS[0], n_test), (1, TASKS[1], n_test))
    }
    return entry


def one_shot_results(
    seed: int, merged_accs: dict[str, float], *, lora_r: int = 4, wall: float = 50.0, extra_versions=()
) -> dict[str, Any]:
    return {
        "strategy": "one_shot",
        "merge": "task_arithmetic",
        "seed": seed,
        "scenario": "multi_task",
        "data_source": "synthetic",
        "tasks": TASKS,
        "status": "completed",
        "wall_seconds": wall,
        "config": {
            "seed": seed,
            "lora": {"r": lora_r},
            "strategy": {"name": "one_shot", "merge": "task_arithmetic", "weighting": "num_examples"},
        },
        "hospitals": [
            {"id": 0, "task": TASKS[0], "n_train": 20, "n_test": 10},
            {"id": 1, "task": TASKS[1], "n_train": 20, "n_test": 10},
        ],
        "versions": [
            hospital_version(0, TASKS[0], 0.9, 10),
            hospital_version(1, TASKS[1], 0.7, 10),
            version("merged", "merged", merged_accs, method="task_arithmetic"),
            *extra_versions,
        ],
        "communication": communication(1),
    }


def fedavg_results(
    seed: int, round_accs: list[dict[str, float]], *, lora_r: int = 4, wall: float = 90.0
) -> dict[str, Any]:
    rounds = len(round_accs)
    return {
        "strategy": "fedavg",
        "merge": None,
        "seed": seed,
        "scenario": "multi_task",
        "data_source": "synthetic",
        "tasks": TASKS,
        "status": "completed",
        "wall_seconds": wall,
        "config": {"seed": seed, "lora": {"r": lora_r}, "strategy": {"name": "fedavg", "rounds": rounds}},
        "versions": [
            version(f"fedavg-round-{k}", "fedavg", accs, round=k) for k, accs in enumerate(round_accs, start=1)
        ],
        "communication": communication(rounds),
    }

"""What one simulated hospital trains and evaluates on, and the experiment's tasks.

(A hospital at a real site reads its own files instead: `fl_app.data.site`.)

Hospitals that share a task split its train/val/test among themselves. Every process computes the
same partition from (seed, flag), so hospitals loaded in different workers never overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import os
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.medmnist_files import MedMNISTUnavailable, expand_root, load_medmnist_task
from fl_app.data.partition import SCHEMES, partition_splits
from fl_app.data.seeding import derive_seed
from fl_app.data.synthetic import apply_site_shift, synthetic_images, synthetic_labels
from fl_app.data.tasks import SIZES, TWO_D_FLAGS, TaskInfo, declared_task, n_samples, npz_name, task_info

logger = logging.getLogger("medforge")

SCENARIOS: tuple[str, ...] = ("multi_task", "multi_center", "site")
#: `data=site` (deployment): each SuperNode names its own data; the experiment declares the tasks.
SITE_DATA_KEYS: tuple[str, ...] = ("scenario", "tasks", "max_train", "max_eval")
DATA_KEYS: tuple[str, ...] = (
    "scenario",
    "flags",
    "size",
    "root",
    "download",
    "synthetic_fallback",
    "partition",
    "dirichlet_alpha",
    "min_samples_per_hospital",
    "max_train",
    "max_eval",
)
#: The synthetic stand-in is one fixed dataset, like a file on disk: the run seed varies partitions only.
SYNTHETIC_SEED = 0

DataSource = Literal["medmnist", "synthetic", "images"]


@dataclass
class HospitalData:
    """One hospital's task and its own train / val / test samples."""

    hospital_id: int
    task: TaskInfo
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    data_source: DataSource


# configuration --------------------------------------------------------------------------------


def _flags(data_cfg: Mapping[str, Any]) -> list[str]:
    flags = data_cfg["flags"]
    if isinstance(flags, str) or not isinstance(flags, Sequence):
        raise ValueError(f"data.flags must be a list of MedMNIST flags, got {flags!r}")
    return [str(f) for f in flags]


def experiment_tasks(data_cfg: Mapping[str, Any]) -> dict[str, TaskInfo]:
    """Every task of the experiment, one head each: data.flags, or data.tasks with data=site."""
    if data_cfg.get("scenario") != "site":
        return {flag: task_info(flag) for flag in _flags(data_cfg)}
    tasks = data_cfg.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(
            f"data.tasks must map each task name to its spec, e.g. {{breastmnist: {{}}, chest: {{classes: [normal, pneumonia]}}}}; got {tasks!r}"
        )
    return {str(name): declared_task(str(name), spec) for name, spec in tasks.items()}


def hospital_tasks(data_cfg: Mapping[str, Any], num_hospitals: int) -> list[str]:
    """Flag of every hospital: round-robin over data.flags (multi_task) or the one flag (multi_center)."""
    scenario = data_cfg["scenario"]
    if scenario == "site":
        raise ValueError(
            "data.scenario=site: each hospital's data lies at its site (node config data-path); "
            "simulated hospitals (partition-id) need data=multi_task or data=multi_center"
        )
    flags = _flags(data_cfg)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown data.scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
    if not flags:
        raise ValueError("data.flags is empty; list at least one MedMNIST flag")
    if scenario == "multi_center" and len(flags) != 1:
        raise ValueError(f"data.scenario=multi_center needs exactly one flag in data.flags, got {flags}")
    return [flags[i % len(flags)] for i in range(num_hospitals)]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate_caps(data_cfg: Mapping[str, Any]) -> None:
    for key in ("max_train", "max_eval"):
        cap = data_cfg[key]
        if cap is not None and (not _is_int(cap) or cap < 1):
            raise ValueError(f"data.{key} must be null (no cap) or an integer >= 1, got {cap!r}")


def validate_data_config(data_cfg: Mapping[str, Any], num_hospitals: int) -> None:
    """Fail fast, before any simulation starts, with the key, the value and the valid choices."""
    site = data_cfg.get("scenario") == "site"
    required = SITE_DATA_KEYS if site else DATA_KEYS
    missing = [key for key in required if key not in data_cfg]
    if missing:
        raise ValueError(f"data config lacks keys {missing}; required keys: {', '.join(required)}")
    if site:  # the hospitals' data lies at the sites: only the task declarations and caps to check
        experiment_tasks(data_cfg)
        _validate_caps(data_cfg)
        return
    if not _is_int(num_hospitals) or num_hospitals < 1:
        raise ValueError(f"num_hospitals must be an integer >= 1, got {num_hospitals!r}")
    flags = _flags(data_cfg)
    unknown = [f for f in flags if f not in TWO_D_FLAGS]
    if unknown:
        raise ValueError(f"data.flags has unknown or 3D flags {unknown}; valid flags: {', '.join(TWO_D_FLAGS)}")
    tasks = hospital_tasks(data_cfg, num_hospitals)  # scenario, empty flags, multi_center with != 1 flag
    size = data_cfg["size"]
    if not _is_int(size) or size not in SIZES:
        raise ValueError(f"data.size={size!r} is not a MedMNIST size; valid sizes: {SIZES}")
    if data_cfg["partition"] not in SCHEMES:
        raise ValueError(f"unknown data.partition {data_cfg['partition']!r}; valid schemes: {', '.join(SCHEMES)}")
    alpha = data_cfg["dirichlet_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"data.dirichlet_alpha must be a number > 0 (0.1 skewed, 100 near IID), got {alpha!r}")
    min_size = data_cfg["min_samples_per_hospital"]
    if not _is_int(min_size) or min_size < 0:
        raise ValueError(f"data.min_samples_per_hospital must be an integer >= 0, got {min_size!r}")
    _validate_caps(data_cfg)
    for key in ("download", "synthetic_fallback"):
        if not isinstance(data_cfg[key], bool):
            raise ValueError(f"data.{key} must be true or false, got {data_cfg[key]!r}")
    for flag in dict.fromkeys(tasks):
        hospitals, n_train = tasks.count(flag), n_samples(flag, "train")
        if n_train < hospitals * min_size:
            raise ValueError(
                f"more hospitals than samples: {hospitals} hospitals x data.min_samples_per_hospital="
                f"{min_size} > {n_train} {flag} training samples; lower min_samples_per_hospital "
                "or use fewer hospitals"
            )


# loading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskSource:
    """A task's labels per split and a way to materialise any subset (synthetic images lazily)."""

    labels: dict[str, np.ndarray]
    take: Callable[[str, np.ndarray], SplitArrays]
    data_source: DataSource


def _medmnist_source(flag: str, size: int, root: str, download: bool) -> _TaskSource:
    splits = load_medmnist_task(flag, root, size, download)
    return _TaskSource(
        labels={split: arrays.labels for split, arrays in splits.items()},
        take=lambda split, idx: splits[split].subset(idx),
        data_source="medmnist",
    )


def _synthetic_source(flag: str, size: int) -> _TaskSource:
    labels = {split: synthetic_labels(flag, split, SYNTHETIC_SEED) for split in SPLITS}

    def take(split: str, idx: np.ndarray) -> SplitArrays:
        images = synthetic_images(flag, size, split, idx, labels[split][idx], SYNTHETIC_SEED)
        return SplitArrays(images=images, labels=labels[split][idx])

    return _TaskSource(labels=labels, take=take, data_source="synthetic")


@lru_cache(maxsize=4)
def _task_source(flag: str, size: int, root: str, download: bool, fallback: bool) -> _TaskSource:
    """Load a task once per process; fall back to synthetic data (one log line) if allowed."""
    try:
        return _medmnist_source(flag, size, root, download)
    except MedMNISTUnavailable as e:
        if not fallback:
            raise
        state = "not found" if e.missing and not download else f"unavailable ({e.reason})"
        fix = f"put {npz_name(flag, size)} there" + ("" if download else " or set data.download=true")
        logger.info(
            "MedMNIST %r (%dpx) %s under %s: using SYNTHETIC MedMNIST-format data instead (%s)",
            flag,
            size,
            state,
            root,
            fix,
        )
        return _synthetic_source(flag, size)


def synthetic_stand_ins(data_cfg: Mapping[str, Any]) -> list[str]:
    """Flags whose MedMNIST file is absent under data.root (so hospitals will use synthetic data)."""
    if data_cfg["scenario"] == "site" or data_cfg["download"] or not data_cfg["synthetic_fallback"]:
        return []
    root = os.path.expanduser(str(data_cfg["root"]))
    size = int(data_cfg["size"])
    return [flag for flag in data_cfg["flags"] if not os.path.exists(os.path.join(root, npz_name(flag, size)))]


def clear_task_cache() -> None:
    """Forget loaded tasks (tests; or after new files were put under the data root)."""
    _task_source.cache_clear()


def split_cap(data_cfg: Mapping[str, Any], split: str) -> int | None:
    """The experiment's cap on a hospital's `split` (data.max_train / data.max_eval; None = all)."""
    return data_cfg["max_train"] if split == "train" else data_cfg["max_eval"]


def capped(idx: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """`idx` itself, or a seeded sorted subsample of `cap` of them when there are more."""
    if cap is None or len(idx) <= cap:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=int(cap), replace=False))


def load_hospital(data_cfg: Mapping[str, Any], hospital_id: int, num_hospitals: int, seed: int) -> HospitalData:
    """Hospital `hospital_id`'s share of its task: partitioned, capped, site-shifted if synthetic."""
    validate_data_config(data_cfg, num_hospitals)
    if not _is_int(hospital_id) or not 0 <= hospital_id < num_hospitals:
        raise ValueError(f"hospital_id must be in [0, {num_hospitals}), got {hospital_id!r}")
    tasks = hospital_tasks(data_cfg, num_hospitals)
    flag = tasks[hospital_id]
    peers = [i for i, f in enumerate(tasks) if f == flag]
    info = task_info(flag)
    size = int(data_cfg["size"])
    source = _task_source(
        flag, size, expand_root(data_cfg["root"]), bool(data_cfg["download"]), bool(data_cfg["synthetic_fallback"])
    )
    # partition: the same in every process (seeded by run seed and flag)
    parts = partition_splits(
        source.labels,
        num_parts=len(peers),
        scheme=data_cfg["partition"],
        alpha=float(data_cfg["dirichlet_alpha"]),
        min_size=int(data_cfg["min_samples_per_hospital"]),
        seed=derive_seed(seed, flag, "partition"),
        n_classes=2 if info.multi_label else info.n_outputs,
    )
    splits = {}
    for split in SPLITS:
        idx = parts[split][peers.index(hospital_id)]
        idx = capped(idx, split_cap(data_cfg, split), derive_seed(seed, flag, hospital_id, split, "cap"))
        arrays = source.take(split, idx)
        # site: synthetic hospitals get their own acquisition look; real images stay as recorded
        if source.data_source == "synthetic":
            arrays = SplitArrays(apply_site_shift(arrays.images, hospital_id, SYNTHETIC_SEED), arrays.labels)
        splits[split] = arrays
    return HospitalData(hospital_id=hospital_id, task=info, data_source=source.data_source, **splits)

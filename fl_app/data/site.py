"""A hospital at a real site: its SuperNode's `--node-config` names the hospital and its data.

    flower-supernode ... --node-config 'hospital-id=0 task="breastmnist" data-path="/data/breast.npz"'

- `hospital-id`: this hospital's number in results (unique in the federation).
- `task`: the task of the data, one of the experiment's tasks (a MedMNIST flag, or a task declared
  in `data.tasks` with `data=site`).
- `data-path`: a MedMNIST-format `.npz` file (its own train/val/test splits are used), or a folder
  with one subfolder of PNG/JPEG images per class (split 70/10/20 per class, seeded by the task
  name, so every run sees the same test images).

The simulation's partitioning is not used here: a site's data is its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.data.arrays import SPLITS
from fl_app.data.hospital import HospitalData, capped, experiment_tasks, split_cap
from fl_app.data.seeding import derive_seed
from fl_app.data.site_files import SiteDataError, declared_source, read_image_folder, read_npz_splits
from fl_app.data.tasks import TWO_D_FLAGS

SITE_KEYS: tuple[str, ...] = ("hospital-id", "task", "data-path")
CAPACITY_KEYS = ("lora-r", "lora-alpha")  # optional: this hospital's LoRA rank and alpha (hospital_steps.hospital_lora)
POLICY_KEYS = ("privacy-epsilon",)  # optional: the site's own DP budget, enforced whatever the server asks
PRIVACY_KEYS = ("privacy-delta", "privacy-ledger")  # optional: the site's δ, the folder of its DP ledgers (docs/privacy.md)
SIMULATION_KEYS: tuple[str, ...] = ("partition-id", "num-partitions")
EXAMPLE = """--node-config 'hospital-id=0 task="breastmnist" data-path="/data/breastmnist.npz"'"""


@dataclass(frozen=True)
class SiteConfig:
    """What a site's node config says: who this hospital is and where its data lies."""

    hospital_id: int
    task: str
    data_path: Path


def site_config(node_config: Mapping[str, Any]) -> SiteConfig | None:
    """The site named by `node_config`, or None for a simulated node (`partition-id`)."""
    given = set(node_config)
    if given & set(SIMULATION_KEYS) and not given & set(SITE_KEYS):
        return None
    if given & set(SIMULATION_KEYS):
        raise ValueError(f"node_config mixes simulation keys {SIMULATION_KEYS} with site keys {SITE_KEYS}; a site uses only {EXAMPLE}")
    optional = set(CAPACITY_KEYS) | set(POLICY_KEYS) | set(PRIVACY_KEYS)
    missing, unknown = [k for k in SITE_KEYS if k not in given], sorted(given - set(SITE_KEYS) - optional)
    if missing or unknown:
        raise ValueError(f"node_config {dict(node_config)}: missing keys {missing}, unknown keys {unknown}; start the SuperNode with {EXAMPLE}")
    for key in (*CAPACITY_KEYS, *POLICY_KEYS):
        value = node_config.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf")
        ):
            what, example = (
                (f"this hospital's LoRA {key[5:]}", "lora-r=4") if key in CAPACITY_KEYS else ("this site's DP budget ε", "privacy-epsilon=8")
            )
            raise ValueError(f"node_config {key}={value!r} must be a positive number ({what}), e.g. --node-config '... {example}'")
    delta = node_config.get("privacy-delta")
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1):
        raise ValueError(f"node_config privacy-delta={delta!r} must be a number in (0, 1) (this site's δ), e.g. --node-config '... privacy-delta=1e-5'")
    ledger = node_config.get("privacy-ledger")
    if ledger is not None and (not isinstance(ledger, str) or not ledger.strip()):
        raise ValueError(f"node_config privacy-ledger={ledger!r} must be a folder path (where this site keeps its DP ledgers), e.g. --node-config '... privacy-ledger=/var/lib/medforge/ledger'")
    hospital_id = node_config["hospital-id"]
    if isinstance(hospital_id, bool) or not isinstance(hospital_id, int) or hospital_id < 0:
        raise ValueError(f"node_config hospital-id={hospital_id!r} must be an integer >= 0, e.g. {EXAMPLE}")
    return SiteConfig(hospital_id, str(node_config["task"]), Path(str(node_config["data-path"])).expanduser())


def load_site(data_cfg: Mapping[str, Any], site: SiteConfig, image_size: int, seed: int) -> HospitalData:
    """This site's own train/val/test data, checked against the experiment's declared task.

    `image_size` is the model's input (image folders are resized to it on reading); `seed` (the
    run seed) only draws the `data.max_train` / `data.max_eval` subsamples.
    """
    tasks = experiment_tasks(data_cfg)
    if site.task not in tasks:
        raise ValueError(
            f"this site's task={site.task!r} is not one of the experiment's tasks {sorted(tasks)}; "
            "fix the node config's task= or declare the task in the experiment (data=site, data.tasks)"
        )
    task, path = tasks[site.task], site.data_path
    if path.is_dir():
        splits = read_image_folder(path, task, image_size, derive_seed(0, task.name, "site-split"))
        source = declared_source(path, "images")
    elif path.is_file() and path.suffix == ".npz":
        splits, source = read_npz_splits(path, task), declared_source(path, "medmnist")
    else:
        state = "is not a .npz file" if path.exists() else "does not exist"
        raise SiteDataError(
            f"data-path={path} {state} at this site; point data-path at a MedMNIST-format .npz file "
            "or at a folder with one subfolder of PNG/JPEG images per class"
        )
    for split in SPLITS:  # cap: seeded subsample, as in simulation
        idx = capped(np.arange(len(splits[split])), split_cap(data_cfg, split), derive_seed(seed, task.name, site.hospital_id, split, "cap"))
        splits[split] = splits[split].subset(idx) if len(idx) < len(splits[split]) else splits[split]
    return HospitalData(hospital_id=site.hospital_id, task=task, data_source=source, **splits)


def preflight(node_config: Mapping[str, Any], image_size: int = 28) -> str:
    """Check a site's data as its SuperNode will read it, before it joins (the site admin's check).

    The experiment's task list lives at the coordinator; here a MedMNIST flag is checked against
    its own classes and a site's own task takes its classes from the folder names. Returns a
    one-line summary; raises ValueError / SiteDataError naming the problem and the fix.
    """
    site = site_config(node_config)
    if site is None:
        raise ValueError(f"node_config {dict(node_config)} is a simulated node's; a site uses {EXAMPLE}")
    path = site.data_path
    if site.task in TWO_D_FLAGS:
        spec: dict[str, Any] = {}
    elif path.is_dir():
        spec = {"classes": sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))}
    else:
        raise SiteDataError(
            f"task={site.task!r} is not a MedMNIST flag, so its data must be an image folder with one subfolder "
            f"per class; data-path={path} is not a folder"
        )
    data_cfg = {"scenario": "site", "tasks": {site.task: spec}, "max_train": None, "max_eval": None}
    data = load_site(data_cfg, site, image_size, seed=0)
    return (
        f"hospital {data.hospital_id}: task {data.task.name} ({data.task.n_outputs} classes), {data.data_source} data "
        f"at {path}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test images"
    )

"""The jobs of a sweep: the manifest the ServerApp reads, the groups that share a federation,
and the marker lines that split the stream into each job's log."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

#: The run-config key that makes the ServerApp run a sweep's jobs instead of one experiment.
SWEEP_KEY = "sweep-path"

_MARKER = re.compile(r"\[sweep\] job (\d+)/(\d+) begins: ")


@dataclass(frozen=True)
class SweepJob:
    """One experiment of a sweep: its validated config file and its own results folder."""

    config_path: Path
    results_dir: Path
    validated: str  # digest of config_path once validated (`config.config_digest`)

    @property
    def name(self) -> str:
        """Unique within a sweep (Hydra's job folder): keys each hospital's per-job state, e.g. its DP ledger."""
        return self.results_dir.name


def federation_shape(cfg: DictConfig) -> tuple[int, int, float, int | None]:
    """What one simulation fixes for all its jobs: hospitals, CPUs and GPU share per hospital, Ray's CPUs."""
    sim = cfg.simulation
    ray_cpus = sim.get("ray_cpus")
    return (
        int(sim.num_hospitals),
        int(sim.client_cpus),
        float(sim.client_gpus),
        None if ray_cpus is None else int(ray_cpus),
    )


def group_by_shape(configs: Sequence[DictConfig]) -> list[list[int]]:
    """Indices of `configs` grouped by federation shape, groups and members in sweep order."""
    groups: dict[tuple, list[int]] = {}
    for index, cfg in enumerate(configs):
        groups.setdefault(federation_shape(cfg), []).append(index)
    return list(groups.values())


def write_manifest(path: Path, jobs: Sequence[SweepJob]) -> Path:
    entries = [
        {"config_path": str(job.config_path), "results_dir": str(job.results_dir), "validated": job.validated}
        for job in jobs
    ]
    path.write_text(json.dumps({"jobs": entries}, indent=2))
    return path


def read_manifest(path: str | Path) -> list[SweepJob]:
    try:
        entries = json.loads(Path(path).read_text())["jobs"]
        return [
            SweepJob(Path(entry["config_path"]), Path(entry["results_dir"]), str(entry["validated"]))
            for entry in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Cannot read the sweep manifest {path} ({type(error).__name__}: {error}); "
            "it is written by `scripts/run.py -m` (the medforge launcher)."
        ) from error


def stop_marker(manifest: Path) -> Path:
    """The file whose presence tells the ServerApp to start no further job (written on SIGINT/SIGTERM)."""
    return Path(manifest).with_suffix(".stop")


def job_marker(index: int, total: int, job: SweepJob) -> str:
    """The log line that opens job `index` (1-based) of `total`; `marked_job` finds it in the stream."""
    return f"[sweep] job {index}/{total} begins: {job.results_dir}"


def marked_job(line: str) -> int | None:
    """The 1-based job index a stream line opens, or None for any other line."""
    found = _MARKER.search(line)
    return int(found.group(1)) if found else None

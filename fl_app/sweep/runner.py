"""Run a sweep's jobs as one Flower simulation per federation shape: one SuperLink, one Ray, one
`flwr run` whose ServerApp runs the jobs one after another (`fl_app.sweep.server`).

Every job keeps what a run of its own has: its results folder with config.yaml and results.json
(status included), and its section of the stream in its own flower.log; the whole stream (and
the SuperLink's log) also goes to `flower-<k>.log` in the sweep folder.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from omegaconf import DictConfig

from fl_app.app_staging import stage_flower_app
from fl_app.config import config_digest
from fl_app.server.results import read_results
from fl_app.server.status import COMPLETED, FAILED, FINISHED
from fl_app.simulation import (
    Interrupted,
    federation_command,
    local_superlink,
    mark_interrupted,
    signals_interrupt,
    stop_grace,
    stream_flwr_run,
)
from fl_app.sweep.jobs import SWEEP_KEY, SweepJob, group_by_shape, marked_job, stop_marker, write_manifest


@dataclass(frozen=True)
class PreparedJob:
    """A validated experiment whose results folder already holds its config.yaml."""

    cfg: DictConfig
    config_path: Path

    @property
    def results_dir(self) -> Path:
        return self.config_path.parent


@dataclass(frozen=True)
class JobOutcome:
    results_dir: Path
    status: str  # completed | failed | interrupted | not run
    error: str = ""


class JobLogs:
    """Writes the stream to the group's log and each line to the flower.log of the job it belongs
    to (from its `[sweep] job k/n begins` line on)."""

    def __init__(self, group_log: Path, jobs: Sequence[SweepJob]) -> None:
        self.group = open(group_log, "ab")
        self.jobs = jobs
        self.current: BinaryIO | None = None

    def write(self, line: bytes) -> None:
        self.group.write(line)
        index = marked_job(line.decode(errors="replace"))
        if index is not None and 1 <= index <= len(self.jobs):
            self._close_current()
            self.current = open(self.jobs[index - 1].results_dir / "flower.log", "ab")
        if self.current is not None:
            self.current.write(line)
            self.current.flush()

    def _close_current(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def close(self) -> None:
        self._close_current()
        self.group.close()


def all_finished(jobs: Sequence[SweepJob]) -> bool:
    """Whether the ServerApp is done with every job (each results.json completed or failed)."""
    for job in jobs:
        try:
            if read_results(job.results_dir).get("status") not in FINISHED:
                return False
        except (OSError, ValueError, AttributeError):
            return False
    return True


def outcome_of(job: SweepJob, log_path: Path) -> JobOutcome:
    results = read_results(job.results_dir)
    if results is None:
        return JobOutcome(
            job.results_dir,
            "not run",
            f"the sweep's simulation ended before this job wrote results.json; see {log_path}",
        )
    status = str(results.get("status"))
    return JobOutcome(job.results_dir, status, "" if status == COMPLETED else str(results.get("error", "")))


def run_group(jobs: Sequence[PreparedJob], manifest: Path, log_path: Path, quiet: bool) -> list[JobOutcome]:
    """One simulation for jobs that share a federation shape; SIGINT/SIGTERM mark every started job
    `interrupted` and raise `simulation.Interrupted`."""
    sweep_jobs = [SweepJob(job.config_path, job.results_dir, config_digest(job.config_path)) for job in jobs]
    write_manifest(manifest, sweep_jobs)
    finished = functools.partial(all_finished, sweep_jobs)
    at_signal: dict[Path, dict | None] = {}

    def record() -> None:  # at the signal: no further job may start, and what each job was doing then
        stop_marker(manifest).touch()
        at_signal.update({job.results_dir: read_results(job.results_dir) for job in sweep_jobs})

    try:
        with (
            signals_interrupt(record),
            local_superlink(log_path, grace=functools.partial(stop_grace, finished)) as env,
        ):
            logs = JobLogs(log_path, sweep_jobs)
            try:
                app_dir = stage_flower_app(Path(env["FLWR_HOME"]) / "app")  # removed with the run's FLWR_HOME
                command = federation_command(jobs[0].cfg, f"{SWEEP_KEY}='{manifest}'", app_dir)
                stream_flwr_run(command, env, logs.write, quiet, finished)
            finally:
                logs.close()
    except Interrupted as interrupted:
        for job in sweep_jobs:
            mark_interrupted(job.results_dir, interrupted.signal_name, at_signal.get(job.results_dir))
        raise
    except Exception as error:  # the SuperLink did not start, or a process survived: the next group still runs
        return [JobOutcome(job.results_dir, FAILED, f"the sweep's simulation failed: {error}") for job in sweep_jobs]
    return [outcome_of(job, log_path) for job in sweep_jobs]


def run_sweep(jobs: Sequence[PreparedJob], sweep_dir: Path, quiet: bool = False) -> list[JobOutcome]:
    """Every job, one simulation per federation shape; outcomes in the order of `jobs`."""
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    for group_index, members in enumerate(group_by_shape([job.cfg for job in jobs])):
        group = [jobs[i] for i in members]
        manifest = sweep_dir / f"sweep-{group_index}.json"
        for i, outcome in zip(members, run_group(group, manifest, sweep_dir / f"flower-{group_index}.log", quiet)):
            outcomes[i] = outcome
    return [outcome for outcome in outcomes if outcome is not None]

"""The ServerApp's side of a sweep: run each job of the manifest on the same Grid, one after another.

The hospitals (Ray workers in simulation) stay up between jobs, so the start-up is paid once and
each worker keeps its backbone and data caches; every job writes its own results folder exactly
as a single run does. A job that fails is recorded as failed and the next one starts.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.common import log
from omegaconf import OmegaConf

from fl_app.config import is_validated
from fl_app.server.experiment import STOPPED_BY_USER, run_experiment_on_grid
from fl_app.server.status import COMPLETED
from fl_app.sweep.jobs import SweepJob, job_marker


def run_jobs_on_grid(grid: Any, jobs: list[SweepJob], stop_requested: Callable[[], bool] = lambda: False) -> list[str]:
    """Run every job until `stop_requested()` (the sweep was interrupted); returns each started
    job's outcome (`completed`, or the error that failed it)."""
    outcomes = []
    for index, job in enumerate(jobs, start=1):
        if stop_requested():
            log(WARNING, "[sweep] interrupted: jobs %d-%d are not started", index, len(jobs))
            break
        log(INFO, "%s", job_marker(index, len(jobs), job))
        try:
            cfg = OmegaConf.load(job.config_path)
            if not is_validated(job.config_path, job.validated):  # edited since `scripts/run.py` checked it
                from fl_app.validation import validate_experiment

                validate_experiment(cfg)
            run_experiment_on_grid(grid, cfg, job.results_dir, job=job.name)
            outcomes.append(COMPLETED)
        except Exception as error:
            if STOPPED_BY_USER in str(error):  # `flwr stop`: the SuperLink answers no job any more
                raise
            log(
                ERROR,
                "[sweep] job %d/%d failed (%s: %s); the sweep goes on",
                index,
                len(jobs),
                type(error).__name__,
                error,
            )
            outcomes.append(f"{type(error).__name__}: {error}")
    return outcomes

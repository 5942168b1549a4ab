"""The `medforge` Hydra launcher: `scripts/run.py -m ...` runs a sweep's jobs as one Flower
simulation per federation shape (hospitals and their resources) instead of one per job, so the
start-up (SuperLink, Ray, the workers' imports, shutdown) is paid once per group.

Hydra hands a launcher every job's overrides at once: each job's folder and config are made
exactly as Hydra's basic launcher makes them (`run_job`, with validation as the job's task), then
the validated jobs run together. A job that fails validation or fails in the run is reported
FAILED to Hydra (which raises once every job is done); the others run. `hydra/launcher=basic`
runs each job as a simulation of its own, as `scripts/run.py` does for a single run.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

#: Longest job folder name kept as Hydra makes it; most file systems refuse names over 255 bytes.
MAX_FOLDER_NAME = 200


def job_folder_name(subdir: str) -> str:
    """Hydra's job folder name (`<num>_<overrides>`), shortened with a digest when too long for a
    file system: a sweep with many overrides would otherwise fail to create its folders (the full
    overrides stay in the folder's .hydra/overrides.yaml)."""
    if len(subdir.encode()) <= MAX_FOLDER_NAME:
        return subdir
    digest = hashlib.sha256(subdir.encode()).hexdigest()[:10]
    kept = subdir.encode()[: MAX_FOLDER_NAME - len(digest) - 1].decode(errors="ignore")
    return f"{kept}~{digest}"


def prepare_job(cfg: DictConfig):
    """A job's task under this launcher: validate it and write its config into Hydra's job folder."""
    from fl_app.config import experiment_only
    from fl_app.simulation import prepare_run
    from fl_app.sweep.runner import PreparedJob

    experiment = experiment_only(cfg)
    return PreparedJob(experiment, prepare_run(experiment, Path(HydraConfig.get().runtime.output_dir).resolve()))


def report_job(job: JobReturn, outcome) -> None:
    """Print a finished job's table and folder (as a single run does) and give Hydra its status."""
    from fl_app.report.summary import run_summary
    from fl_app.server.results import read_results
    from fl_app.server.status import COMPLETED

    folder = outcome.results_dir
    if outcome.status == COMPLETED:
        print("\n".join(run_summary(read_results(folder))), flush=True)
        print(folder, flush=True)
        job.return_value = str(folder)
        return
    job.status = JobStatus.FAILED
    job.return_value = RuntimeError(f"The experiment {outcome.status}: {outcome.error}; results so far in {folder}.")
    print(f"run.py: job {folder.name} {outcome.status}: {outcome.error}", file=sys.stderr, flush=True)


class SweepLauncher(Launcher):
    """Runs all jobs of a sweep together (see the module docstring). The task function is not called:
    what `scripts/run.py` does for one run, this launcher does for the sweep."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from fl_app.simulation import Interrupted, exit_interrupted
        from fl_app.sweep.runner import run_sweep

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs as one Flower simulation per federation shape", len(job_overrides))
        returns, prepared = [], []
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = index
                sweep_config.hydra.job.num = index
                sweep_config.hydra.sweep.subdir = job_folder_name(str(sweep_config.hydra.sweep.subdir))
            job = run_job(
                hydra_context=self.hydra_context,
                task_function=prepare_job,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            returns.append(job)
            if job.status == JobStatus.COMPLETED:
                prepared.append(offset)
            else:
                print(f"run.py: job #{index} not run: {job._return_value}", file=sys.stderr, flush=True)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        try:
            outcomes = run_sweep(
                [returns[i].return_value for i in prepared], sweep_dir, quiet=bool(self.config.get("quiet", False))
            )
        except Interrupted as interrupted:
            exit_interrupted(interrupted, "sweep", sweep_dir, "<the interrupted job's folder>")
        for offset, outcome in zip(prepared, outcomes):
            report_job(returns[offset], outcome)
        return returns

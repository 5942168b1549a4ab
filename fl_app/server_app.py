"""Flower ServerApp: read the experiment (or a sweep's jobs), run it on the Grid, write the results folder. Thin."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_app.config import experiment_from_run_config, validated_before
from fl_app.server.experiment import run_experiment_on_grid
from fl_app.sweep.jobs import SWEEP_KEY, read_manifest, stop_marker

app = ServerApp()


def results_dir_of(run_config) -> Path:
    """`results-dir` from the run config, else outputs/flwr/<timestamp> under the working directory."""
    folder = str(run_config.get("results-dir", ""))
    return Path(folder) if folder else Path.cwd() / "outputs" / "flwr" / time.strftime("%Y-%m-%d_%H-%M-%S")


@app.main()
def main(grid: Grid, context: Context) -> None:
    if sweep := str(context.run_config.get(SWEEP_KEY, "")):  # `scripts/run.py -m`: many experiments, one federation
        from fl_app.sweep.server import run_jobs_on_grid

        run_jobs_on_grid(grid, read_manifest(sweep), stop_requested=stop_marker(sweep).exists)
        return
    cfg = experiment_from_run_config(context.run_config)
    if not validated_before(context.run_config):  # `flwr run .` by hand: check it here
        from fl_app.validation import validate_experiment  # imports the backbone and PEFT: only when needed

        validate_experiment(cfg)
    run_experiment_on_grid(grid, cfg, results_dir_of(context.run_config))

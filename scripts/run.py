#!/usr/bin/env python
"""Run one MedForge experiment (or a Hydra `-m` sweep) as a Flower simulation on Ray.

    python scripts/run.py                                  # the default (quickstart) experiment
    python scripts/run.py strategy=fedavg strategy.rounds=3 lora.r=4 seed=1
    python scripts/run.py -m strategy=one_shot,fedavg seed=0,1   # 4 jobs, one Flower simulation
    python scripts/run.py +resume=outputs/<date>/<time>          # merge + evaluate what an interrupted run received

The run ends with a table of every model version (fl_app/report/summary.py); the results folder is
Hydra's run folder (`hydra.run.dir=...`), and the last line printed is its path. Ctrl-C (SIGINT)
or SIGTERM stops every process of the run; results.json then says `status: interrupted` and the
exit code is 130 (SIGINT) or 143 (SIGTERM).

A `-m` sweep runs through the `medforge` Hydra launcher (fl_app/sweep/): its jobs share one Flower
simulation per federation shape, so start-up is paid once; each job still gets its own folder
under `hydra.sweep.dir`, with its table and path printed at the end. `hydra/launcher=basic` runs
each job as a simulation of its own (this function, once per job).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fl_app.config import experiment_only
from fl_app.remerge.resume import resume_run
from fl_app.report.summary import run_summary
from fl_app.server.results import read_results
from fl_app.simulation import Interrupted, exit_interrupted, run_simulation


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if cfg.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    if cfg.get("resume"):
        logging.getLogger().setLevel(logging.WARNING if cfg.quiet else logging.INFO)
        try:
            folder = resume_run(Path(str(cfg.resume)))
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            print(f"run.py: cannot resume: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        print("\n".join(run_summary(read_results(folder))), flush=True)
        print(folder, flush=True)
        return str(folder)
    folder = Path(HydraConfig.get().runtime.output_dir)
    try:
        folder = run_simulation(experiment_only(cfg), folder, quiet=bool(cfg.quiet))
    except Interrupted as interrupted:
        exit_interrupted(interrupted, "run", folder.resolve(), str(folder.resolve()))
    print("\n".join(run_summary(read_results(folder))), flush=True)
    print(folder, flush=True)
    return str(folder)


if __name__ == "__main__":
    main()

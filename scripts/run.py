#!/usr/bin/env python
"""Run one MedForge experiment (or a Hydra `-m` sweep) as a Flower simulation on Ray.

    python scripts/run.py                                  # the default (quickstart) experiment
    python scripts/run.py strategy=fedavg strategy.rounds=3 lora.r=4 seed=1
    python scripts/run.py -m strategy=one_shot,fedavg seed=0,1

The run ends with a table of every model version (fl_app/report/summary.py); the results folder is
Hydra's run folder (`hydra.run.dir=...`), and the last line printed is its path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fl_app.config import experiment_only
from fl_app.report.summary import run_summary
from fl_app.server.results import read_results
from fl_app.simulation import run_simulation


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if cfg.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    folder = run_simulation(experiment_only(cfg), Path(HydraConfig.get().runtime.output_dir), quiet=bool(cfg.quiet))
    print("\n".join(run_summary(read_results(folder))), flush=True)
    print(folder, flush=True)
    return str(folder)


if __name__ == "__main__":
    main()

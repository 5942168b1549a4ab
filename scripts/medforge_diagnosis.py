"""Diagnose MedForge on a stored run (its hospitals' adapters, data rebuilt from its config.yaml).

    .venv/bin/python scripts/medforge_diagnosis.py RUN --variants        # variants searched on validation
    .venv/bin/python scripts/medforge_diagnosis.py RUN --search          # paper search on distilled / real / noise sets
    .venv/bin/python scripts/medforge_diagnosis.py RUN --head-fit --ipc 1 10 50 --iterations 100 1000

Writes `diagnosis/*.json`, `*.md` and `objective_vs_validation.png` into the run folder (or --out).
Choices are made on validation; test numbers are for the report only.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import replace
from pathlib import Path

import torch

from fl_app.calibration import DistillSettings
from fl_app.diagnosis.calibration_signal import head_fit_table, search_sources, worth_in_real_images
from fl_app.diagnosis.report import markdown_table, objective_figure, write_json
from fl_app.diagnosis.scoring import InProcessScorer
from fl_app.diagnosis.variants import PAPER, compare_variants, default_variants
from fl_app.remerge.stored import load_stored_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a completed one_shot or medforge run folder")
    parser.add_argument("--out", type=Path, default=None, help="default: <run>/diagnosis")
    parser.add_argument("--variants", action="store_true", help="each MedForge variant searched on validation")
    parser.add_argument("--search", action="store_true", help="the paper's search on distilled, real and noise sets")
    parser.add_argument("--head-fit", action="store_true", help="a head fitted on each calibration set alone")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--iterations", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--data-root", default=None, help="where the run's MedMNIST files are now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    run = load_stored_run(args.run)
    if args.data_root:
        run.experiment.data.root = args.data_root
    out = args.out or args.run / "diagnosis"
    scorer = InProcessScorer(run.experiment, run.hospitals)
    seed = int(run.experiment.seed)
    if args.variants:
        rows = compare_variants(scorer, default_variants(args.budget, seed))
        write_json(out / "variants.json", rows)
        table = markdown_table(rows, ["variant", "val_loss", "val_auc", "val_acc", "test_auc", "test_acc", "weights"])
        (out / "variants.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
    if args.search:
        settings = replace(PAPER, budget=args.budget, seed=seed)
        searches = search_sources(scorer, DistillSettings(ipc=10, iterations=100, lr=0.01), settings, seed)
        write_json(out / "search_sources.json", searches)
        rows = [{"source": name, **{k: v for k, v in s.items() if k != "points"}} for name, s in searches.items()]
        table = markdown_table(
            rows, ["source", "coefficients", "correlation", "spearman", "val_loss", "val_auc", "test_auc", "test_acc"]
        )
        (out / "search_sources.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
        print(objective_figure(searches, out / "objective_vs_validation.png", f"{args.run.name}: the paper's search"))
    if args.head_fit:
        grid = [DistillSettings(ipc=i, iterations=n, lr=0.01) for i, n in itertools.product(args.ipc, args.iterations)]
        rows = head_fit_table(scorer, grid, seed=seed)
        for row in rows:
            if row["source"] != "real":
                row["worth_real_per_class"] = worth_in_real_images(rows, row["task"], row["auc"])
        write_json(out / "head_fit.json", rows)
        table = markdown_table(
            rows, ["task", "source", "ipc", "iterations", "auc", "acc", "worth_real_per_class", "seconds"]
        )
        (out / "head_fit.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Poisoning on real adapters: how far can k malicious hospitals move the merge, and what stops them?

    python scripts/attack.py RUN_DIR --out results/attack
    python scripts/attack.py RUN_DIR --methods task_arithmetic --attacks sign_flip --factors 1 10 100

RUN_DIR is a finished one_shot run (its stored hospital adapters, as scripts/remerge.py reads them).
The first --hospitals of them take part; the last --attackers of those send a malicious adapter
made from their own (see fl_app/attack/attacks.py). Every case is screened, weighted and merged
exactly as a run with that defence would be (`strategies/screening.py`), and every merged model is
evaluated at every hospital in this process. RUN_DIR is never written; --out gets table.md,
outcomes.json and one plot per method and attacker count.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from fl_app.attack.attacks import ATTACKS
from fl_app.attack.defences import DEFENCES
from fl_app.attack.experiment import attack_cases, run_attacks
from fl_app.attack.report import legend, markdown_table, plot_accuracy_vs_strength
from fl_app.remerge import load_stored_run


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished one_shot run folder with adapters/hospital-<id>/")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, outcomes.json and plots")
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties"])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument(
        "--attacks", nargs="+", default=["sign_flip", "scaled", "random", "inflated_count"], choices=ATTACKS
    )
    parser.add_argument("--factors", nargs="+", type=float, default=[1.0, 3.0, 10.0, 100.0])
    parser.add_argument("--attackers", nargs="+", type=int, default=[1], help="malicious hospitals per case")
    parser.add_argument("--hospitals", type=int, default=5, help="hospitals taking part (the first N stored)")
    parser.add_argument(
        "--merge-rank",
        type=int,
        default=40,
        help="rank of every merged adapter (40 = lossless task arithmetic for 5 hospitals at r=8; TIES/median truncated)",
    )
    parser.add_argument("--data-root", default=None, help="the run's data folder, if it moved")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run = load_stored_run(args.run_dir)
        if args.data_root:
            run.experiment = OmegaConf.merge(run.experiment, {"data": {"root": args.data_root}})
        cases = attack_cases(args.methods, args.defences, args.attacks, args.factors, args.attackers)
        outcomes = run_attacks(run, cases, args.hospitals, args.merge_rank)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"attack.py: error: {error}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outcomes.json").write_text(json.dumps([o.as_row() for o in outcomes], indent=1))
    table = markdown_table(outcomes)
    (args.out / "table.md").write_text(f"# Poisoning on {args.run_dir}\n\n{table}\n\n{legend()}")
    for method in args.methods:
        for k in args.attackers:
            plot_accuracy_vs_strength(outcomes, method, k, args.out / f"accuracy-vs-strength-{method}-k{k}.png")
    print(table)
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

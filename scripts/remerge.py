#!/usr/bin/env python
"""Train once, merge many: re-merge the hospital adapters of a finished one_shot run.

    python scripts/remerge.py RUN_DIR --merge ties dare_ties knots
    python scripts/remerge.py RUN_DIR --merge ties --param density=0.5 --weighting uniform
    python scripts/remerge.py --list                      # registered methods and their parameters

Each method becomes a new version `remerge-<method>[-<settings>]` (or --name), evaluated on every
hospital's test split in this process (data and model rebuilt from RUN_DIR/config.yaml; no
retraining, no Flower), saved under RUN_DIR/adapters/<name>/ and appended to results.json. The
run's own versions are never changed; an existing remerge version is replaced only with --force.
`scripts/compare.py RUN_DIR` then shows them as rows. It ends with the run's table of versions
(the new ones included), and the last line printed is RUN_DIR.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fl_app.remerge import load_stored_run, parse_params, parse_weights, plan_requests, registered_methods, remerge
from fl_app.report.summary import run_summary
from fl_app.server.results import read_results
from strategies.merging import WEIGHTINGS


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir", nargs="?", type=Path, help="a finished one_shot run folder (holds results.json and adapters/)"
    )
    parser.add_argument(
        "--merge", nargs="+", default=[], metavar="METHOD", help="registered merge methods (see --list)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter: key=value for every selected method declaring it, or method.key=value",
    )
    parser.add_argument("--weighting", choices=WEIGHTINGS, default=None, help="default: the run's strategy.weighting")
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="ID=W",
        help="with --weighting explicit: hospital ID's merge weight (default: the run's strategy.weights)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="global scale of the merged update (default: the run's strategy.scale)",
    )
    parser.add_argument(
        "--merge-rank",
        type=int,
        default=None,
        help="truncate the merge to this rank (default: the run's strategy.merge_rank)",
    )
    parser.add_argument(
        "--name", default=None, help="version name, only with one method (default: remerge-<method>[-<settings>])"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing remerge version of the same name")
    parser.add_argument("--data-root", default=None, help="the MedMNIST folder, if the run's data.root moved")
    parser.add_argument("--list", action="store_true", help="list the registered merge methods and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and the run folder")
    args = parser.parse_args(argv)
    if args.list:
        print(registered_methods())
        return None
    if args.run_dir is None or not args.merge:
        parser.error("give RUN_DIR and --merge METHOD [METHOD ...] (or --list)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        run = load_stored_run(args.run_dir)
        requests = plan_requests(
            args.merge,
            parse_params(args.param),
            run.experiment.strategy,
            weighting=args.weighting,
            scale=args.scale,
            rank=args.merge_rank,
            name=args.name,
            weights=parse_weights(args.weight),
        )
        remerge(run, requests, force=args.force, data_root=args.data_root)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"remerge.py: error: {error}\n")
    print("\n".join(run_summary(read_results(args.run_dir))), flush=True)
    print(args.run_dir, flush=True)
    return args.run_dir


if __name__ == "__main__":
    main(sys.argv[1:])

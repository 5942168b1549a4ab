#!/usr/bin/env python
"""Compare finished runs: report.md, report.csv and PNG plots from their results folders.

    python scripts/compare.py multirun/2026-01-01/12-00-00            # a sweep folder
    python scripts/compare.py outputs/.../run-a outputs/.../run-b --out reports/ab

Every folder at or below the given ones that holds a results.json is read (failed runs are
skipped with a warning). The report goes into --out (default: the first folder given); the last
line printed is the path of report.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fl_app.report import load_runs, write_report


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or sweep folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first folder)")
    parser.add_argument(
        "--fedavg-rounds",
        type=int,
        nargs="+",
        default=[],
        metavar="R",
        help="also show FedAvg after these rounds as rows (e.g. 1 3); the last round is always shown",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and the report path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        runs = load_runs(args.folders)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"compare.py: error: {error}\n")
    written = write_report(runs, args.out or args.folders[0], fedavg_rounds=args.fedavg_rounds)
    for path in written.values():
        logging.getLogger("medforge.report").info("wrote %s", path)
    print(written["md"], flush=True)
    return written["md"]


if __name__ == "__main__":
    main(sys.argv[1:])

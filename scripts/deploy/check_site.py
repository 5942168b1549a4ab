#!/usr/bin/env python
"""Check this site's data before starting its SuperNode: the same --node-config, read as the ClientApp will.

    python scripts/deploy/check_site.py --node-config 'hospital-id=0 task="breastmnist" data-path="/data/breast.npz"'

Prints one line (hospital, task, data source, split sizes) and exits 0, or prints the problem
with its fix and exits 1. `start_supernode.sh` runs it first and does not start a SuperNode whose
data cannot be read (unless given --skip-check).
"""

from __future__ import annotations

import argparse
import sys

from flwr.common.config import parse_config_args

from fl_app.data.site import preflight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-config", required=True, help="exactly what the SuperNode gets (--node-config)")
    args = parser.parse_args(argv)
    try:
        summary = preflight(parse_config_args([args.node_config]))
    except ValueError as error:  # SiteDataError included
        print(f"check_site: ERROR: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"check_site: OK: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

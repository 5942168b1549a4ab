#!/usr/bin/env python
"""A site pins the app release it reviewed: the hash of its bundle, in the site's own pin file.

    python scripts/deploy/pin_app.py --pins site-pins.txt --app . --note "medforge v1.2, reviewed by J. Doe"
    python scripts/deploy/pin_app.py --pins site-pins.txt --fab medforge.fab --note "..."   # a .fab received
    python scripts/deploy/pin_app.py --check site-pins.txt                                 # what is pinned

`--app DIR` builds the bundle the way `flwr run DIR` does (Flower's `build_fab_from_disk`: sorted
files, fixed dates), so a site that checked out and reviewed the release the coordinator runs gets
the same hash the coordinator's `flwr run` sends. Any file more or less in the coordinator's
folder (an edit, an untracked module under fl_app/) changes the hash, and the site refuses it.
`start_supernode.sh --pinned-apps site-pins.txt` then runs only pinned bundles
(docs/deployment.md "Pinning app releases").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fl_app.app_pins import fab_hash, read_pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pins", type=Path, help="the site's pin file (created if missing)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--app", type=Path, help="an app folder (the reviewed checkout) to build and pin")
    source.add_argument("--fab", type=Path, help="a .fab bundle file to pin")
    parser.add_argument("--note", default="", help="what was reviewed, by whom, when (kept beside the hash)")
    parser.add_argument("--check", type=Path, metavar="PINS", help="read a pin file and list what it pins")
    args = parser.parse_args(argv)
    try:
        if args.check:
            pins = read_pins(args.check)
            print(f"{args.check}: {len(pins)} pinned app bundle(s)")
            for digest, note in pins.items():
                print(f"  {digest}  {note}")
            return 0
        if not args.pins or not (args.app or args.fab):
            parser.error("give --pins and one of --app or --fab (or --check PINS)")
        if args.fab and not args.fab.is_file():
            raise ValueError(f"bundle {args.fab} not found")
        content = args.fab.read_bytes() if args.fab else build_fab_from_disk(args.app)
        digest = fab_hash(content)
        pins = read_pins(args.pins) if args.pins.exists() else {}
    except ValueError as error:
        print(f"pin_app: {error}", file=sys.stderr)
        return 2
    if digest in pins:
        print(f"{digest} is already pinned in {args.pins}")
        return 0
    with args.pins.open("a") as out:
        out.write(f"{digest} {' '.join(args.note.split())}".rstrip() + "\n")
    print(f"pinned {digest} in {args.pins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

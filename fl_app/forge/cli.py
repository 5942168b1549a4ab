"""`medforge` / `scripts/forge.py`: a results folder as a repository (log, show, withdraw, recommit, credit, diff, release).

    medforge log RUN
    medforge show RUN VERSION
    medforge withdraw RUN --hospital K [--from VERSION] [--verify]
    medforge recommit RUN --hospital K --adapter PATH [--from VERSION] [--n-train N]
    medforge credit RUN [--version VERSION]
    medforge diff RUN V1 V2
    medforge release RUN VERSION --to DIR

New versions are evaluated in this process on every hospital's test split (data and model rebuilt
from RUN/config.yaml, as scripts/remerge.py does) and appended to RUN/results.json; existing
versions and adapters are never changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fl_app.server.results import read_results

PROG = "medforge"
DEFAULT_VERSION = "merged"


def _results(run_dir: Path) -> dict:
    results = read_results(run_dir)
    if results is None:
        raise FileNotFoundError(
            f"{run_dir} is not a results folder: it has no results.json; pass the folder scripts/run.py printed last."
        )
    return results


def cmd_log(args: argparse.Namespace) -> None:
    from fl_app.forge.history import log_lines

    print("\n".join(log_lines(_results(args.run_dir))))


def cmd_show(args: argparse.Namespace) -> None:
    from fl_app.forge.history import show_lines

    print("\n".join(show_lines(_results(args.run_dir), args.version, str(args.run_dir))))


def cmd_withdraw(args: argparse.Namespace) -> None:
    from fl_app.forge.withdraw import withdraw

    print("\n".join(withdraw(args.run_dir, args.hospital, args.source, args.name, args.verify, args.data_root)))


def cmd_recommit(args: argparse.Namespace) -> None:
    from fl_app.forge.recommit import recommit

    lines = recommit(args.run_dir, args.hospital, args.adapter, args.source, args.name, args.n_train, args.data_root)
    print("\n".join(lines))


def cmd_credit(args: argparse.Namespace) -> None:
    from fl_app.forge.credit import credit

    print("\n".join(credit(args.run_dir, args.version, args.data_root, args.shapley, args.seed)))


def cmd_diff(args: argparse.Namespace) -> None:
    from fl_app.forge.diff import diff

    print("\n".join(diff(args.run_dir, args.first, args.second)))


def cmd_release(args: argparse.Namespace) -> None:
    from fl_app.forge.release import release

    print(release(args.run_dir, args.version, args.to, force=args.force))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    top.add_argument("-q", "--quiet", action="store_true", help="print only warnings and the command's output")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("run_dir", type=Path, help="a finished run folder (results.json, config.yaml, adapters/)")
        sub.set_defaults(fn=fn)
        return sub

    command("log", cmd_log, "every version in order, one line each")
    show = command("show", cmd_show, "one version in full")
    show.add_argument("version")
    withdraw = command("withdraw", cmd_withdraw, "a new version: the merge without one hospital")
    withdraw.add_argument("--hospital", type=int, required=True, help="the hospital id to withdraw")
    withdraw.add_argument("--from", dest="source", default=DEFAULT_VERSION, help="the version to withdraw it from")
    withdraw.add_argument("--name", default=None, help="the new version's name (default <from>-without-<K>)")
    withdraw.add_argument(
        "--verify",
        action="store_true",
        help="also merge the remaining hospitals from scratch (not saved) and compare ΔW and metrics",
    )
    recommit = command("recommit", cmd_recommit, "a new version: hospital K's newer adapter replaces its old one")
    recommit.add_argument("--hospital", type=int, required=True)
    recommit.add_argument("--adapter", type=Path, required=True, help="a PEFT adapter folder (or its safetensors)")
    recommit.add_argument("--from", dest="source", default=DEFAULT_VERSION)
    recommit.add_argument("--name", default=None, help="the new version's name (default <from>-recommit-<K>)")
    recommit.add_argument("--n-train", type=int, default=None, help="training examples of the new adapter")
    credit = command("credit", cmd_credit, "each hospital's contribution: the metric drop when it is withdrawn")
    credit.add_argument("--version", default=DEFAULT_VERSION)
    credit.add_argument(
        "--shapley",
        type=int,
        default=0,
        metavar="PERMUTATIONS",
        help="also Shapley values by permutation sampling with this budget (≤ PERMUTATIONS × (N−1) merges evaluated)",
    )
    credit.add_argument("--seed", type=int, default=0, help="the permutations' seed")
    diff = command("diff", cmd_diff, "per-module change of ΔW and per-task metric change between two versions")
    diff.add_argument("first")
    diff.add_argument("second")
    release = command("release", cmd_release, "a standalone PEFT folder with a model card README.md")
    release.add_argument("version")
    release.add_argument("--to", type=Path, required=True, help="the release folder (must not exist, or --force)")
    release.add_argument("--force", action="store_true", help="replace an existing release folder")
    for sub in (withdraw, recommit, credit):
        sub.add_argument("--data-root", default=None, help="the MedMNIST folder, if the run's data.root moved")
    return top


def main(argv: Sequence[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args.fn(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        cli.exit(2, f"{PROG} {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()

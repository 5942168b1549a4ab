"""Find results folders (a run folder, a sweep folder, or any folder above them) and load them."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.server.results import RESULTS_FILE
from fl_app.server.status import COMPLETED

logger = logging.getLogger("medforge.report")


@dataclass(frozen=True)
class Run:
    """One finished experiment: its folder and its results.json."""

    folder: Path
    results: dict[str, Any]


def _natural_key(path: Path) -> list[Any]:
    """Sort sweep jobs 0, 1, ..., 10 (not 0, 1, 10, 2)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _folders_below(root: Path) -> list[Path]:
    """Folders holding a results.json below `root`, following symlinked folders (a curve that links
    runs made elsewhere) but visiting each real folder once, so a link cycle ends."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if RESULTS_FILE in files:
            found.append(Path(folder))
    return found


def find_result_folders(paths: Iterable[Path | str]) -> list[Path]:
    """Every folder holding a results.json at or below `paths`, each once, in natural order."""
    folders: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist; pass a run folder (outputs/<date>/<time>) or a sweep folder (multirun/<date>/<time>)."
            )
        found = [path] if (path / RESULTS_FILE).is_file() else sorted(_folders_below(path), key=_natural_key)
        if not found:
            raise FileNotFoundError(
                f"no {RESULTS_FILE} at or below {path}; pass a run folder (outputs/<date>/<time>) or a sweep folder (multirun/<date>/<time>)."
            )
        folders.update((folder.resolve(), None) for folder in found)
    return list(folders)


def load_runs(paths: Iterable[Path | str]) -> list[Run]:
    """The completed runs at or below `paths`; runs that failed or are still running are skipped, each with a warning."""
    paths = list(paths)
    runs = []
    for folder in find_result_folders(paths):
        results = json.loads((folder / RESULTS_FILE).read_text())
        status = results.get("status")
        if status != COMPLETED:
            logger.warning(
                "Skipping %s: status=%s%s", folder, status, f" ({results['error']})" if results.get("error") else ""
            )
            continue
        runs.append(Run(folder, results))
    if not runs:
        raise ValueError(f"none of the runs under {[str(p) for p in paths]} completed; nothing to compare.")
    return runs

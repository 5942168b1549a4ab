"""A copy of just the Flower app's files for `flwr run` to package.

`flwr run <dir>` walks every file under <dir> before it filters them by `fab-include`: from the
project root that is the whole `.venv` and every results folder (57,000 files, 2-4 s of each
run's start-up on a 2-core machine). Copying only what `fab-include` names (about 150 files)
into a fresh folder gives Flower the same FAB from a walk of that folder alone.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("pyproject.toml", ".gitignore")  # the app's config, and the ignore rules Flower applies too


def app_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files `fab-include` names under `root`, plus pyproject.toml and .gitignore (relative paths)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["flwr"]["app"]["fab-include"]
    found = {Path(name) for name in ALWAYS if (root / name).is_file()}
    for pattern in patterns:
        found.update(path.relative_to(root) for path in root.glob(pattern) if path.is_file() and not path.is_symlink())
    return sorted(found)


def stage_flower_app(dest: Path, root: Path = PROJECT_ROOT) -> Path:
    """Copy the app's files from `root` into `dest` (created); returns `dest`, for `flwr run dest`."""
    for relative in app_files(root):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
    return dest

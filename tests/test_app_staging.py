"""`flwr run` on the staged copy packages exactly the FAB it packages from the project root."""

from __future__ import annotations

import io
import zipfile

from flwr.cli.build import build_fab_from_disk

from fl_app.app_staging import PROJECT_ROOT, stage_flower_app


def _fab_contents(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_staged_app_gives_flower_the_same_fab_as_the_project_root(tmp_path):
    staged = stage_flower_app(tmp_path / "app")

    from_root, from_stage = _fab_contents(build_fab_from_disk(PROJECT_ROOT)), _fab_contents(build_fab_from_disk(staged))

    assert set(from_stage) == set(from_root)
    assert from_stage == from_root
    assert "fl_app/server_app.py" in from_stage and "conf/config.yaml" in from_stage


def test_only_the_apps_files_are_copied(tmp_path):
    staged = stage_flower_app(tmp_path / "app")

    copied = {path.relative_to(staged).parts[0] for path in staged.rglob("*") if path.is_file()}

    assert copied <= {"fl_app", "strategies", "conf", "pyproject.toml", ".gitignore"}
    assert not any(staged.rglob("__pycache__"))

"""The README's and docs/*.md's commands point at things that exist: scripts, presets, registered merge methods, guides."""

from __future__ import annotations

import re
import runpy

import pytest

from strategies.merging import MERGE_METHODS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
GUIDES = sorted((REPO / "docs").glob("*.md"))
TEXTS = {"README.md": README, **{f"docs/{g.name}": g.read_text() for g in GUIDES}}
ALL_TEXT = "\n".join(TEXTS.values())
COMMANDS = [
    line.strip()
    for text in TEXTS.values()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S)
    for line in block.splitlines()
    if line.strip()
]


def test_every_script_the_readme_runs_exists():
    scripts = {m for c in COMMANDS for m in re.findall(r"scripts/([\w/]+\.(?:py|sh))", c)}

    assert scripts >= {"run.py", "compare.py", "remerge.py", "install.sh"}
    assert all((REPO / "scripts" / s).is_file() for s in scripts)


def test_every_preset_the_readme_names_exists():
    presets = set(re.findall(r"experiment=(\w+)", ALL_TEXT))

    assert presets and all((REPO / "conf" / "experiment" / f"{p}.yaml").is_file() for p in presets)


def test_every_merge_method_the_readme_uses_is_registered():
    methods = {m for c in COMMANDS for m in re.findall(r"--merge ([\w ]+?)(?: --|$)", c) for m in m.split()}

    assert methods and methods <= set(MERGE_METHODS)


def test_every_guide_is_linked_from_the_readme_and_every_link_resolves():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", README))

    assert GUIDES and linked == {f"docs/{g.name}" for g in GUIDES}
    for name, text in TEXTS.items():
        base = (REPO / name).parent
        for target in re.findall(r"\]\(((?:\.\./|docs/)[\w./-]+\.md)(?:#[\w-]+)?\)", text):
            assert (base / target).is_file(), f"{name} links to {target}, which does not exist"


def test_the_readme_front_page_stays_short():
    assert len(README.splitlines()) <= 260


def script_main(name: str):
    """A script's main(), loaded from scripts/ without running it (the same code the command runs)."""
    return runpy.run_path(str(REPO / "scripts" / name), run_name="medforge_test")["main"]


def test_remerge_list_shows_every_registered_method(capsys):
    script_main("remerge.py")(["--list"])

    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")}
    assert listed == set(MERGE_METHODS)


@pytest.mark.parametrize("script", ["compare.py", "remerge.py"])
def test_scripts_fail_clearly_on_a_folder_without_results(script, tmp_path, capsys):
    args = [str(tmp_path)] + (["--merge", "task_arithmetic"] if script == "remerge.py" else [])

    with pytest.raises(SystemExit) as exit_info:
        script_main(script)(args)

    assert exit_info.value.code == 2 and "results.json" in capsys.readouterr().err


def test_ci_lints_then_runs_the_readme_test_command():
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    install, test = "bash scripts/install.sh", ".venv/bin/python -m pytest"

    assert f"{install} && {test}" in README  # the README's command: install, then every test
    assert (
        ci.index(install)
        < ci.index(".venv/bin/ruff check .")
        < ci.index(".venv/bin/ruff format --check .")
        < ci.index(test)
    )
    assert ci[-1] == test


def test_attack_fails_clearly_on_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script_main("attack.py")([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "is not a results folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

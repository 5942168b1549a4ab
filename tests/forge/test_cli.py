"""The medforge command (fl_app/forge/cli.py) on a tiny finished run: new versions added, originals untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fl_app.forge.cli import main


def _fingerprints(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "results.json"
    }


def test_withdraw_adds_an_evaluated_version_and_leaves_the_originals_byte_identical(tiny_run, capsys):
    before = _fingerprints(tiny_run)
    versions_before = json.loads((tiny_run / "results.json").read_text())["versions"]

    main(["-q", "withdraw", str(tiny_run), "--hospital", "1", "--verify"])

    results = json.loads((tiny_run / "results.json").read_text())
    assert results["versions"][: len(versions_before)] == versions_before
    after = _fingerprints(tiny_run)
    assert {k: after[k] for k in before} == before
    new = results["versions"][-1]
    assert new["name"] == "merged-without-1" and new["parent"] == "merged" and new["withdrawn"] == [1]
    assert new["hospitals"] == [0, 2] and new["forge"]["path"] == "factored"
    assert new["per_task"]["breastmnist"]["acc"] is not None
    assert (tiny_run / "adapters" / "merged-without-1" / "adapter_model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "vs from-scratch merge: max relative ΔW difference" in out

    main(["log", str(tiny_run)])
    log = capsys.readouterr().out.splitlines()
    assert log[-1].startswith("merged-without-1") and " merged " in log[-1] and "-1" in log[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["withdraw", "{run}", "--hospital", "7"], "hospital 7 is not part of version 'merged'"),
        (["withdraw", "{run}", "--hospital", "0", "--from", "v9"], "no version 'v9'"),
        (["show", "{run}", "v9"], "no version 'v9'"),
    ],
)
def test_unknown_hospital_or_version_exits_with_a_clear_message(tiny_run, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=tiny_run) for a in argv])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_diff_reports_modules_and_tasks(tiny_run, capsys):
    main(["diff", str(tiny_run), "hospital-0", "merged"])

    out = capsys.readouterr().out
    assert "diff hospital-0 -> merged" in out and "breastmnist" in out and "cosine" in out


def test_recommit_adds_the_committed_adapter_and_the_new_merge(tiny_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    newer = Path(shutil.copytree(tiny_run / "adapters" / "hospital-0", tmp_path / "newer"))
    state = load_file(newer / "adapter_model.safetensors")
    save_file({k: 1.5 * v if "lora_B" in k else v for k, v in state.items()}, str(newer / "adapter_model.safetensors"))
    versions_before = json.loads((tiny_run / "results.json").read_text())["versions"]

    main(["-q", "recommit", str(tiny_run), "--hospital", "0", "--adapter", str(newer)])

    results = json.loads((tiny_run / "results.json").read_text())
    assert results["versions"][: len(versions_before)] == versions_before
    committed, merged = results["versions"][-2:]
    assert (
        committed["name"] == "hospital-0.2" and committed["kind"] == "commit" and committed["replaces"] == "hospital-0"
    )
    assert merged["name"] == "merged-recommit-0" and merged["recommitted"] == [0]
    assert merged["sources"] == {"0": "hospital-0.2"} and merged["forge"]["path"] == "factored"
    assert "merged-recommit-0" in capsys.readouterr().out

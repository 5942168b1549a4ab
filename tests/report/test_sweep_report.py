"""One real tiny sweep (2 strategies x 2 seeds), then the README's compare and remerge commands on it."""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from fl_app.config import compose_experiment
from fl_app.hospital_steps import task_outputs
from fl_app.model import MedForgeClassifier, build_backbone
from fl_app.report.collect import find_result_folders
from fl_app.server.results import read_results
from strategies.merging import MERGE_METHODS
from tests.conftest import REPO, TINY
from tests.e2e.conftest import no_leftover_processes  # noqa: F401  (fixture)
from tests.report.test_report_files import PNG_MAGIC, read_csv

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

TASKS = ["breastmnist", "pneumoniamnist", "bloodmnist"]
# the data-free methods re-merge any run; RegMean and Fisher need statistics the sweep did not ask for
# (their remerge is tested on a run that kept them: tests/e2e/test_simulation.py)
DATA_FREE = sorted(name for name, method in MERGE_METHODS.items() if method.stats is None)


def script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    if check:
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`python scripts/run.py -m strategy=one_shot,fedavg seed=0,1` on tiny data: four Flower simulations."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "multirun"
    completed = script(
        "run.py",
        "-m",
        "strategy=one_shot,fedavg",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY,
        "train.local_epochs=1",
        "++strategy.rounds=2",  # fedavg's knob; one_shot has no rounds (++ adds it there, where it is ignored)
        # folder names from the swept keys only: the tiny-model overrides would pass the 255-byte name limit
        f"hydra.job.config.override_dirname.exclude_keys=[data.root,hydra.sweep.dir,quiet,{','.join(o.split('=')[0] for o in TINY)}]",
        f"data.root={tmp / 'no-medmnist'}",
        "quiet=true",
    )
    printed = [Path(line) for line in completed.stdout.split() if line.startswith(str(sweep_dir))]
    assert len(printed) == 4 and all(p.parent == sweep_dir for p in printed)
    return sweep_dir


def runs_of(sweep_dir: Path) -> dict[tuple[str, int], dict]:
    return {(r["strategy"], r["seed"]): r for r in (read_results(p.parent) for p in sweep_dir.rglob("results.json"))}


def folder_of(sweep_dir: Path, strategy: str, seed: int) -> Path:
    """The job folder of one combination (Hydra names it <job>_<overrides>)."""
    (folder,) = [
        p.parent
        for p in sweep_dir.glob("*/results.json")
        if f"seed={seed}," in p.parent.name and f",strategy={strategy}," in p.parent.name
    ]
    return folder


@pytest.fixture(scope="module")
def report(sweep) -> Path:
    completed = script("compare.py", str(sweep))
    assert completed.stdout.strip().splitlines()[-1] == str(sweep / "report.md")
    return sweep


def test_a_sweep_keeps_one_results_folder_per_combination(sweep):
    runs = runs_of(sweep)

    assert set(runs) == {("one_shot", 0), ("one_shot", 1), ("fedavg", 0), ("fedavg", 1)}
    assert all(r["status"] == "completed" for r in runs.values())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split("_")[0] for name in jobs] == ["0", "1", "2", "3"]
    assert all(folder_of(sweep, strategy, seed).parent == sweep for strategy, seed in runs)


def test_the_report_numbers_equal_those_in_the_results_folders(report):
    runs = runs_of(report)
    rows = read_csv(report / "report.csv")

    merged = [next(v for v in runs[("one_shot", s)]["versions"] if v["name"] == "merged") for s in (0, 1)]
    last = [runs[("fedavg", s)]["versions"][-1] for s in (0, 1)]
    assert [v["name"] for v in last] == ["fedavg-round-2"] * 2
    for label, versions in (("task_arithmetic", merged), ("fedavg (2 rounds)", last)):
        row = rows[label]
        assert row["seeds"] == "0;1" and row["runs"] == "2"
        for task in TASKS:
            accs = [v["per_task"][task]["acc"] for v in versions]
            assert float(row[f"{task}/acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-12)
            assert float(row[f"{task}/acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-12)
        assert float(row["mean/acc_mean"]) == pytest.approx(
            statistics.fmean(v["mean_acc"] for v in versions), abs=1e-12
        )
    for strategy, label in (("one_shot", "task_arithmetic"), ("fedavg", "fedavg (2 rounds)")):
        communication = [runs[(strategy, s)]["communication"] for s in (0, 1)]
        assert float(rows[label]["upload_bytes_mean"]) == statistics.fmean(c["upload_bytes"] for c in communication)
        assert float(rows[label]["download_bytes_mean"]) == statistics.fmean(c["download_bytes"] for c in communication)
        assert float(rows[label]["rounds_mean"]) == communication[0]["rounds"]
        assert float(rows[label]["wall_seconds_mean"]) == pytest.approx(
            statistics.fmean(runs[(strategy, s)]["wall_seconds"] for s in (0, 1))
        )
    assert "| task_arithmetic | 2 |" in (report / "report.md").read_text()


def test_the_plots_are_written_and_not_empty(report):
    for name in ("per_task_accuracy.png", "accuracy_vs_bytes.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def snapshot(run_dir: Path) -> tuple[str, dict[str, str]]:
    """The run's results.json text and a hash of every adapter file it had."""
    hashes = {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run_dir / "adapters").rglob("*"))
        if p.is_file()
    }
    return (run_dir / "results.json").read_text(), hashes


@pytest.fixture(scope="module")
def remerged(sweep) -> tuple[Path, str, dict[str, str]]:
    """`scripts/remerge.py RUN --merge <every data-free registered method>` on the seed-0 one_shot run."""
    run_dir = folder_of(sweep, "one_shot", 0)
    before = snapshot(run_dir)
    completed = script("remerge.py", str(run_dir), "--merge", *DATA_FREE, "-q")
    assert completed.stdout.strip().splitlines()[-1] == str(run_dir)
    return run_dir, *before


@pytest.mark.parametrize("method", DATA_FREE)
def test_remerge_adds_a_scored_version_per_registered_method(remerged, method):
    run_dir, _, _ = remerged

    entry = next(v for v in read_results(run_dir)["versions"] if v["name"] == f"remerge-{method}")

    assert entry["kind"] == "merged" and entry["method"] == method and entry["label"] == method
    assert set(entry["per_task"]) == set(TASKS) and 0.0 <= entry["mean_acc"] <= 1.0
    assert set(entry["per_hospital"]) == {"0", "1", "2"}
    assert (run_dir / entry["adapter"] / "adapter_model.safetensors").is_file()


def test_remerge_leaves_the_original_versions_and_adapters_untouched(remerged):
    run_dir, text_before, adapters_before = remerged
    before, after = json.loads(text_before), read_results(run_dir)

    n = len(before["versions"])
    assert json.dumps(after["versions"][:n]) == json.dumps(before["versions"])
    assert {k: v for k, v in after.items() if k != "versions"} == {k: v for k, v in before.items() if k != "versions"}
    _, adapters_after = snapshot(run_dir)
    assert {k: adapters_after[k] for k in adapters_before} == adapters_before
    assert not list((run_dir / "adapters").glob(".*"))  # no staging left behind


def test_remerge_with_the_runs_own_method_reproduces_its_scores(remerged):
    versions = {v["name"]: v for v in read_results(remerged[0])["versions"]}

    for task in TASKS:
        assert versions["remerge-task_arithmetic"]["per_task"][task]["acc"] == pytest.approx(
            versions["merged"]["per_task"][task]["acc"], abs=1e-12
        )


def test_a_remerged_adapter_loads_with_peft(remerged):
    cfg = compose_experiment([*TINY])
    classifier = MedForgeClassifier(build_backbone(cfg.model), task_outputs({"data": {"flags": TASKS}}))

    folder = remerged[0] / "adapters" / "remerge-task_arithmetic"

    model = PeftModel.from_pretrained(classifier, folder)

    # every saved tensor (LoRA and heads) is what the model now holds, under PEFT's own keys
    saved = load_file(folder / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    assert saved and saved.keys() == loaded.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_remerge_refuses_to_overwrite_without_force_and_writes_nothing(remerged):
    run_dir = remerged[0]
    before = snapshot(run_dir)

    completed = script("remerge.py", str(run_dir), "--merge", "task_arithmetic", check=False)

    assert completed.returncode == 2 and "already exists" in completed.stderr and "--force" in completed.stderr
    assert snapshot(run_dir) == before


def test_compare_shows_remerged_methods_as_rows(remerged, tmp_path):
    script("compare.py", str(remerged[0]), "--out", str(tmp_path))

    rows = read_csv(tmp_path / "report.csv")
    assert set(DATA_FREE) <= set(rows) and "hospital (own adapter, mean)" in rows
    assert rows["task_arithmetic"]["runs"] == "1"  # the remerge repeating the run's own merge counts once


def test_runs_linked_into_a_folder_are_found_once_and_link_cycles_end(tmp_path):
    made_elsewhere = tmp_path / "elsewhere" / "run"
    made_elsewhere.mkdir(parents=True)
    (made_elsewhere / "results.json").write_text(json.dumps({"status": "completed"}))
    curve = tmp_path / "curve" / "eps-inf"
    curve.mkdir(parents=True)
    (curve / "one_shot").symlink_to(made_elsewhere)
    (curve / "loop").symlink_to(tmp_path / "curve")

    found = find_result_folders([tmp_path / "curve"])

    assert [f.resolve() for f in found] == [made_elsewhere.resolve()]

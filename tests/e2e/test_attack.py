"""scripts/attack.py on a finished simulation: malicious hospitals injected into its stored adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_app.config import compose_experiment
from fl_app.simulation import run_simulation
from tests.conftest import TINY
from tests.report.test_readme import script_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_attack_table_plot_and_the_run_left_untouched(tmp_path: Path):
    # Prepare: a multi-center one-shot run with four hospitals on one task
    cfg = compose_experiment(
        [
            *TINY,
            "data=multi_center",
            "data.flags=[breastmnist]",
            "simulation.num_hospitals=4",
            "train.local_epochs=1",
            f"data.root={tmp_path / 'no-medmnist'}",
        ]
    )
    run_dir = run_simulation(cfg, tmp_path / "run", quiet=True)
    before = (run_dir / "results.json").read_bytes()
    # Execute: one sign-flipping hospital at 10x, without and with the default defence
    out = script_main("attack.py")(
        [str(run_dir), "--out", str(tmp_path / "attack"), "--hospitals", "4", "--methods", "task_arithmetic"]
        + ["--defences", "none", "default", "--attacks", "sign_flip", "--factors", "10", "--merge-rank", "16"]
    )
    # Assert
    rows = {(r["defence"], r["attack"]): r for r in json.loads((out / "outcomes.json").read_text())}
    assert set(rows) == {
        ("none", "none"),
        ("default", "none"),
        ("none", "sign_flip"),
        ("default", "sign_flip"),
        ("honest-only", "none"),
    }
    undefended, defended = rows[("none", "sign_flip")], rows[("default", "sign_flip")]
    assert undefended["merged"] and undefended["cosine"] < 0.5 and undefended["norm_ratio"] > 1.5
    assert defended["cosine"] > undefended["cosine"] and defended["honest_rejected"] == []
    assert all(r["mean_acc"] is not None for r in rows.values() if r["merged"])
    assert "| task_arithmetic | default | sign_flip | 10 |" in (out / "table.md").read_text()
    assert (out / "accuracy-vs-strength-task_arithmetic-k1.png").stat().st_size > 0
    assert (run_dir / "results.json").read_bytes() == before

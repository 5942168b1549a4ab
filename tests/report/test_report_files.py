"""write_report on synthetic runs: report.md, report.csv and the PNGs are written and agree."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fl_app.report import Run, compare_runs, write_report
from fl_app.report.table import Stat
from fl_app.report.write import format_cell
from tests.report.synthetic_results import fedavg_results, version

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["method"]: row for row in csv.DictReader(stream)}


def test_report_files_are_written_and_the_csv_holds_the_table(sweep_runs, tmp_path):
    written = write_report(sweep_runs, tmp_path)

    assert {"md", "csv", "per_task_accuracy.png", "accuracy_vs_bytes.png"} <= set(written)
    for name in ("per_task_accuracy.png", "accuracy_vs_bytes.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    rows = read_csv(tmp_path / "report.csv")
    assert float(rows["task_arithmetic"]["breastmnist/acc_mean"]) == pytest.approx(0.7)
    assert float(rows["fedavg (2 rounds)"]["upload_bytes_mean"]) == 4000
    assert rows["task_arithmetic"]["seeds"] == "0;1" and "upload_bytes" in rows["task_arithmetic"]["best"].split(";")
    markdown = (tmp_path / "report.md").read_text()
    assert "| task_arithmetic | 2 | 0.700 ± 0.141 |" in markdown
    assert "![Accuracy against communication](accuracy_vs_bytes.png)" in markdown and "no progressive curve" in markdown
    assert "synthetic stand-ins" in markdown


def test_the_progressive_plot_is_written_when_a_run_has_progressive_versions(tmp_path):
    progressive = [version(f"v{k}", "progressive", {"breastmnist": 0.2 * k, "bloodmnist": 0.1 * k}) for k in (1, 2, 3)]
    runs = [
        Run(
            tmp_path / "p",
            {
                **fedavg_results(0, [{"breastmnist": 0.5, "bloodmnist": 0.5}]),
                "strategy": "progressive",
                "versions": progressive,
            },
        )
    ]

    written = write_report(runs, tmp_path / "out")

    assert written["progressive.png"].read_bytes().startswith(PNG_MAGIC)
    assert "![Progressive merging" in written["md"].read_text()


def test_best_cells_are_bold_in_markdown(sweep_runs):
    from fl_app.report.write import markdown_table

    table = markdown_table(compare_runs(sweep_runs))

    fedavg_line = next(line for line in table.splitlines() if line.startswith("| fedavg (2 rounds)"))
    assert "**0.700 ± 0.000**" in fedavg_line  # bloodmnist ACC: best, same in both seeds


@pytest.mark.parametrize(
    ("stat", "unit", "text"),
    [
        (Stat(0.5, 0.01, 2), "", "0.500 ± 0.010"),
        (Stat(0.5, None, 1), "", "0.500"),
        (Stat(None, None, 0), "", "–"),
        (Stat(27081.0, 0.0, 2), "bytes", "27.08 kB"),
        (Stat(2.5e6, 1e5, 2), "bytes", "2.50 MB ± 100.00 kB"),
        (Stat(3.0, None, 1), "rounds", "3"),
        (Stat(81.6, 4.2, 2), "s", "82 s ± 4"),
    ],
)
def test_cells_are_formatted_in_their_units(stat, unit, text):
    assert format_cell(stat, unit) == text

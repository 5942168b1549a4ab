"""The diagnosis' pure pieces: reading a distilled set as a number of real images, the pooled search loss, tables."""

from __future__ import annotations

import math

import pytest

from fl_app.diagnosis.calibration_signal import worth_in_real_images
from fl_app.diagnosis.report import markdown_table
from fl_app.diagnosis.variants import best_by_validation, mean_rows
from strategies.medforge.federated import pooled_loss

REAL = [{"task": "t", "source": "real", "ipc": n, "auc": a} for n, a in [(1, 0.6), (5, 0.7), (10, 0.8)]]


def test_a_set_as_good_as_real_images_reads_as_their_number():
    assert worth_in_real_images(REAL, "t", 0.75) == pytest.approx(7.5)
    assert worth_in_real_images(REAL, "t", 0.8) == pytest.approx(10.0)
    assert worth_in_real_images(REAL, "t", 0.95) == 10.0  # beyond the largest measured: capped, not extrapolated
    assert worth_in_real_images(REAL, "t", 0.3) == pytest.approx(0.5)  # below one real image per class


def test_the_search_pools_hospitals_by_validation_size_within_a_task_and_averages_tasks():
    losses = {0: 1.0, 1: 3.0, 2: 0.5}
    sizes = {0: 100, 1: 300, 2: 7}
    tasks = {0: "a", 1: "a", 2: "b"}
    assert pooled_loss(losses, sizes, tasks) == pytest.approx(((100 * 1.0 + 300 * 3.0) / 400 + 0.5) / 2)


def test_the_variant_chosen_is_the_best_on_validation_never_on_test():
    rows = [
        {"variant": "a", "val_auc": 0.80, "val_loss": 0.5, "test_auc": 0.99},
        {"variant": "b", "val_auc": 0.85, "val_loss": 0.6, "test_auc": 0.70},
    ]
    assert best_by_validation(rows)["variant"] == "b"


def test_means_over_seeds_keep_the_first_runs_order():
    runs = [
        [{"variant": "x", "val_auc": 0.5}, {"variant": "y", "val_auc": 0.7}],
        [{"variant": "y", "val_auc": 0.9}, {"variant": "x", "val_auc": 0.7}],
    ]
    assert [(r["variant"], r["val_auc"]) for r in mean_rows(runs)] == [
        ("x", pytest.approx(0.6)),
        ("y", pytest.approx(0.8)),
    ]


def test_tables_print_missing_numbers_as_a_dash():
    lines = markdown_table([{"a": math.nan, "b": [0.12345, 1.0]}], ["a", "b"])
    assert lines[-1] == "| – | [0.123, 1.000] |"

"""The benchmark's arithmetic: start-up split, ratio, memory slope and the one-line target check."""

from __future__ import annotations

import pytest

from fl_app.bench.report import (
    Row,
    format_row,
    inrun_ratio,
    phase_profile,
    slope,
    split_startup,
    startup_parts,
    summary,
)


def results(server_start: float, wall: float, first_reply: float, first_step: float) -> dict:
    return {
        "wall_seconds": wall,
        "timeline": {
            "serverapp_started_at": server_start,
            "first_reply_at": first_reply,
            "first_sent_at": server_start + 1,
            "first_reply_step_seconds": first_step,
            "phases": {
                "train": {
                    "first_sent_at": server_start + 1,
                    "last_reply_at": first_reply + 4,
                    "messages": 3,
                    "step_seconds": 5.0,
                }
            },
        },
    }


def row(strategy="one_shot", n=10, startup=12.0, rest=11.0, floor=10.0, peak=1000.0, inrun=None) -> Row:
    return Row(strategy, n, 1, startup, rest, floor, peak, 500.0, 2_000_000, 1_000_000, 1.0, inrun)


def test_start_up_is_launch_to_first_reply_less_its_step_plus_shutdown():
    # launched at 100; ServerApp 108..130; first reply at 118 after a 2 s step; the CLI returned at 133
    start, rest = split_startup(100.0, 133.0, results(108.0, 22.0, 118.0, 2.0))

    assert start == pytest.approx((118 - 100 - 2) + (133 - 130))
    assert start + rest == pytest.approx(33.0)
    assert (
        startup_parts(100.0, 133.0, results(108.0, 22.0, 118.0, 2.0))
        == "launch to ServerApp 8.0 s, ServerApp to first reply 8.0 s, shutdown 3.0 s"
    )


def test_ratio_is_the_rest_over_the_floor_and_the_total_adds_up():
    r = row(startup=12.0, rest=11.0, floor=10.0)

    assert r.ratio == pytest.approx(1.1)
    assert r.total_s == pytest.approx(23.0)
    assert format_row(r).split()[:3] == ["one_shot", "10", "1"]


def test_slope_is_the_least_squares_fit_and_needs_two_ns():
    assert slope([3, 10, 30, 100], [1000 + 2 * n for n in (3, 10, 30, 100)]) == pytest.approx(2.0)
    assert slope([10], [5.0]) is None


def test_summary_checks_each_target_on_the_rows_that_count():
    rows = [
        row(n=3, rest=30.0, peak=1006.0),
        row(n=10, rest=10.5, peak=1020.0, inrun=1.04),
        row(n=100, rest=12.0, peak=1200.0, inrun=1.03),
        row("fedavg", n=10, rest=10.2, startup=16.0),
    ]

    line = summary(rows)

    assert "one_shot ratio@N>=10 max 1.20 (N=100) FAIL" in line  # N=3's 3.0 does not count
    assert "fedavg ratio@N>=10 max 1.02 (N=10) PASS" in line
    assert "one_shot in-run ratio@N>=10 max 1.04 (N=10) PASS" in line
    assert "one_shot memory slope +2.0 MB/hospital" in line
    assert "start-up max 16.0 s FAIL" in line
    assert "N=100 completed: yes" in line


def test_phase_profile_names_each_phase_with_its_span_and_the_hospitals_own_time():
    assert phase_profile(results(0.0, 10.0, 5.0, 1.0)) == "train: 3 messages, span 8.0 s, hospitals' own 5.0 s"


def test_in_run_ratio_takes_the_first_workers_start_up_out_of_the_spans():
    # train sent at 1, first reply at 10 after a 2 s step (7 s of start-up), last reply at 14; 5 s of own steps
    assert inrun_ratio(results(0.0, 20.0, 10.0, 2.0)) == pytest.approx((14 - 1 - 7) / 5.0)


def test_the_summary_gives_the_memory_and_evaluation_traffic_slopes_per_hospital():
    from dataclasses import replace

    rows = [replace(row(n=n, peak=1000.0 + 0.5 * n), evaluation_download_bytes=int(2e6 * n)) for n in (10, 30, 100)]

    line = summary(rows)

    assert "one_shot memory slope +0.5 MB/hospital PASS <=1" in line
    assert "one_shot evaluation download slope +2.00 MB/hospital" in line


def test_the_sweep_summary_checks_the_sweep_against_the_sum_of_its_floors():
    from fl_app.bench.report import SWEEP_TARGET, SweepRow, format_sweep_row, sweep_summary

    fast = SweepRow("one_shot", 3, 8, floors_s=100.0, separate_s=400.0, sweep_s=125.0, identical_jobs=8, load=1.0)
    slow = SweepRow("fedavg", 3, 8, floors_s=100.0, separate_s=400.0, sweep_s=131.0, identical_jobs=7, load=1.0)

    line = sweep_summary([fast, slow])

    assert fast.sweep_ratio == 1.25 <= SWEEP_TARGET < slow.sweep_ratio
    assert "one_shot K=8: sweep/floor 1.25 PASS" in line and "fedavg K=8: sweep/floor 1.31 FAIL" in line
    assert "3.2x faster than separate runs" in line and "metrics identical 7/8" in line
    assert format_sweep_row(fast).split()[-2] == "8/8"

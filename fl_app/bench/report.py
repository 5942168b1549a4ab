"""The benchmark's arithmetic: split a Flower run into start-up and the rest, compare, summarise.

Pure functions over measured numbers, so the table and the target checks are tested without
running a simulation.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RATIO_TARGET = 1.10
RATIO_FROM_N = 10
STARTUP_TARGET_S = 15.0
MEMORY_SLOPE_TARGET = 1.0  # one-shot: MB of peak memory per extra hospital, up to N=100
SWEEP_TARGET = 1.3  # a K-job sweep as one simulation, over the sum of its jobs' plain-loop floors


def split_startup(launched_at: float, ended_at: float, results: Mapping[str, Any]) -> tuple[float, float]:
    """(start-up, rest) seconds of one Flower run, from its wall clock and its results.json.

    Start-up is what a run pays whatever its work: launching the SuperLink and the simulation,
    Ray and the workers' imports (everything before the first hospital reply, less that
    hospital's own step), and shutting down after the ServerApp finished. The rest is the
    hospitals' work plus the per-message overhead that grows with it.
    """
    timeline = results["timeline"]
    first_step = first_reply_step_seconds(results)
    server_end = float(timeline["serverapp_started_at"]) + float(results["wall_seconds"])
    before = float(timeline["first_reply_at"]) - launched_at - first_step
    after = max(ended_at - server_end, 0.0)
    startup = before + after
    return startup, (ended_at - launched_at) - startup


def startup_parts(launched_at: float, ended_at: float, results: Mapping[str, Any]) -> str:
    """Start-up in its three parts: launch to ServerApp, ServerApp to the first reply (Ray, worker imports), shutdown."""
    timeline = results["timeline"]
    server_start = float(timeline["serverapp_started_at"])
    to_reply = float(timeline["first_reply_at"]) - server_start - first_reply_step_seconds(results)
    shutdown = max(ended_at - server_start - float(results["wall_seconds"]), 0.0)
    return f"launch to ServerApp {server_start - launched_at:.1f} s, ServerApp to first reply {to_reply:.1f} s, shutdown {shutdown:.1f} s"


def inrun_ratio(results: Mapping[str, Any]) -> float:
    """Flower's time on the hospitals' messages over the hospitals' own time on them, inside one run.

    Sum of the phases' spans (first message sent to last reply; the first worker's start-up taken
    out) over the `step-seconds` the hospitals reported: the per-message overhead measured on the
    same processes at the same moment, so it does not depend on how two processes share a busy
    machine (which the ratio to the separate plain loop does).
    """
    timeline = results["timeline"]
    phases = timeline["phases"].values()
    warm_up = float(timeline["first_reply_at"]) - float(timeline["first_sent_at"]) - first_reply_step_seconds(results)
    spans = sum(p["last_reply_at"] - p["first_sent_at"] for p in phases) - warm_up
    return spans / sum(p["step_seconds"] for p in phases)


def first_reply_step_seconds(results: Mapping[str, Any]) -> float:
    """The `step-seconds` the first hospital to reply reported (0 if unknown)."""
    return float(results["timeline"].get("first_reply_step_seconds") or 0.0)


def phase_profile(results: Mapping[str, Any]) -> str:
    """Where a run's time went after start-up: per phase, its wall span and the hospitals' own seconds."""
    timeline = results["timeline"]
    parts = []
    for phase, entry in timeline.get("phases", {}).items():
        span = entry["last_reply_at"] - entry["first_sent_at"]
        parts.append(
            f"{phase}: {entry['messages']} messages, span {span:.1f} s, hospitals' own {entry['step_seconds']:.1f} s"
        )
    return "; ".join(parts)


@dataclass(frozen=True)
class Row:
    """One N and strategy: the Flower run against the plain loop, measured in the same invocation."""

    strategy: str
    n: int
    rounds: int
    startup_s: float
    rest_s: float
    floor_s: float
    flower_peak_mb: float
    floor_peak_mb: float
    upload_bytes: int
    download_bytes: int
    load: float  # 1-minute load average when the row finished
    inrun_ratio: float | None = None  # see `inrun_ratio`
    evaluation_download_bytes: int = 0  # the evaluate messages alone (O(N) unless strategy.cross_evaluation)

    @property
    def total_s(self) -> float:
        return self.startup_s + self.rest_s

    @property
    def ratio(self) -> float:
        """Flower's work time over the plain loop's: 1.0 means no per-message overhead at all."""
        return self.rest_s / self.floor_s


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys on xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


HEADER = (
    f"{'strategy':<9} {'N':>4} {'R':>2} {'start-up s':>10} {'rest s':>8} {'floor s':>8} {'ratio':>6} "
    f"{'in-run':>6} {'peak MB':>8} {'floor MB':>8} {'up MB':>7} {'down MB':>8} {'load':>5}"
)


def format_row(r: Row) -> str:
    return (
        f"{r.strategy:<9} {r.n:>4} {r.rounds:>2} {r.startup_s:>10.1f} {r.rest_s:>8.1f} {r.floor_s:>8.1f} {r.ratio:>6.2f} {fmt(r.inrun_ratio, '6.2f')} "
        f"{r.flower_peak_mb:>8.0f} {r.floor_peak_mb:>8.0f} {r.upload_bytes / 1e6:>7.2f} {r.download_bytes / 1e6:>8.2f} {r.load:>5.2f}"
    )


def fmt(value: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def _check(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary(rows: Sequence[Row]) -> str:
    """One line: each target, its measured value and PASS/FAIL; memory slope in MB per hospital."""
    parts = []
    for strategy in dict.fromkeys(r.strategy for r in rows):
        mine = [r for r in rows if r.strategy == strategy]
        large = [r for r in mine if r.n >= RATIO_FROM_N]
        if large:
            worst = max(large, key=lambda r: r.ratio)
            parts.append(
                f"{strategy} ratio@N>={RATIO_FROM_N} max {worst.ratio:.2f} (N={worst.n}) {_check(worst.ratio <= RATIO_TARGET)} <={RATIO_TARGET:.2f}"
            )
            inrun = [r for r in large if r.inrun_ratio is not None]
            if inrun:
                most = max(inrun, key=lambda r: r.inrun_ratio)
                parts.append(
                    f"{strategy} in-run ratio@N>={RATIO_FROM_N} max {most.inrun_ratio:.2f} (N={most.n}) {_check(most.inrun_ratio <= RATIO_TARGET)}"
                )
        memory = slope([r.n for r in mine], [r.flower_peak_mb for r in mine])
        if memory is not None:
            target = (
                f" {_check(memory <= MEMORY_SLOPE_TARGET)} <={MEMORY_SLOPE_TARGET:.0f}"
                if strategy == "one_shot"
                else ""
            )
            parts.append(f"{strategy} memory slope {memory:+.1f} MB/hospital{target}")
        traffic = slope([r.n for r in mine], [r.evaluation_download_bytes / 1e6 for r in mine])
        if traffic is not None:
            parts.append(f"{strategy} evaluation download slope {traffic:+.2f} MB/hospital")
    if rows:
        startup = max(r.startup_s for r in rows)
        parts.append(f"start-up max {startup:.1f} s {_check(startup <= STARTUP_TARGET_S)} <={STARTUP_TARGET_S:.0f} s")
    biggest = max((r.n for r in rows), default=0)
    parts.append(f"N=100 completed: {'yes' if biggest >= 100 else 'not run'}")
    return "SUMMARY " + "; ".join(parts)


@dataclass(frozen=True)
class SweepRow:
    """K jobs three ways, measured in the same invocation: plain loops, K Flower runs, one Flower sweep."""

    strategy: str
    n: int
    jobs: int
    floors_s: float  # sum of the jobs' plain-loop floors
    separate_s: float  # K `run_simulation`s, one after another (wall)
    sweep_s: float  # one `run_sweep` of the K jobs (wall)
    identical_jobs: int  # sweep jobs whose per-task metrics equal the same job's separate run
    load: float

    @property
    def separate_ratio(self) -> float:
        return self.separate_s / self.floors_s

    @property
    def sweep_ratio(self) -> float:
        return self.sweep_s / self.floors_s


SWEEP_HEADER = (
    f"{'strategy':<9} {'N':>3} {'K':>3} {'floors s':>9} {'separate s':>10} {'sweep s':>8} "
    f"{'separate/floor':>14} {'sweep/floor':>11} {'same metrics':>12} {'load':>5}"
)


def format_sweep_row(r: SweepRow) -> str:
    return (
        f"{r.strategy:<9} {r.n:>3} {r.jobs:>3} {r.floors_s:>9.1f} {r.separate_s:>10.1f} {r.sweep_s:>8.1f} "
        f"{r.separate_ratio:>14.2f} {r.sweep_ratio:>11.2f} {f'{r.identical_jobs}/{r.jobs}':>12} {r.load:>5.2f}"
    )


def sweep_summary(rows: Sequence[SweepRow]) -> str:
    """The sweep target per row: one simulation for K jobs costs <= SWEEP_TARGET x their floors."""
    parts = [
        f"{r.strategy} K={r.jobs}: sweep/floor {r.sweep_ratio:.2f} {_check(r.sweep_ratio <= SWEEP_TARGET)} <={SWEEP_TARGET}, "
        f"{r.separate_s / r.sweep_s:.1f}x faster than separate runs, metrics identical {r.identical_jobs}/{r.jobs}"
        for r in rows
    ]
    return "SWEEP SUMMARY " + "; ".join(parts)

"""Peak memory of a simulation: every process of one run summed, sampled in a background thread.

A run's processes are this process's descendants (flwr CLI, SuperLink, SuperExec, simulation,
Ray's GCS and raylet) plus Ray workers that were re-parented away from that tree; those are
recognised by the FLWR_HOME they inherited, which `fl_app.simulation` makes unique per run.
Memory is PSS (proportional set size: a page shared by k processes counts 1/k in each), so the
sum over processes counts torch's shared libraries once, unlike a sum of RSS.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psutil

RUN_HOME = "FLWR_HOME"


def pss_bytes(process: psutil.Process) -> int:
    """PSS where the kernel reports it (Linux), else RSS."""
    info = process.memory_full_info()
    return int(getattr(info, "pss", info.rss))


def run_processes(root: psutil.Process, include_root: bool) -> list[psutil.Process]:
    """`root`'s descendants (and itself if asked) plus re-parented processes sharing their FLWR_HOME."""
    tree = root.children(recursive=True)
    homes = set()
    for process in tree:
        try:
            home = process.environ().get(RUN_HOME)
        except psutil.Error:
            continue
        if home:
            homes.add(home)
    known = {p.pid for p in tree} | {root.pid}
    strays = [p for p in _ray_processes() if p.pid not in known and _home_of(p) in homes] if homes else []
    return ([root] if include_root else []) + tree + strays


def _ray_processes() -> Iterable[psutil.Process]:
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith(("ray::", "raylet", "gcs_server")):
            yield process


def _home_of(process: psutil.Process) -> str | None:
    try:
        return process.environ().get(RUN_HOME)
    except psutil.Error:
        return None


def total_pss(processes: Iterable[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += pss_bytes(process)
        except psutil.Error:  # ended between listing and reading
            continue
    return total


class PeakMemory:
    """Context manager: sample the summed PSS of a run's processes every `interval` s; keep the peak."""

    def __init__(self, include_root: bool, interval: float = 1.0, root: psutil.Process | None = None) -> None:
        self.root = root or psutil.Process()
        self.include_root = include_root
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            processes = run_processes(self.root, self.include_root)
        except psutil.Error:  # the root has ended (and been reaped)
            return
        total = total_pss(processes)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(processes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

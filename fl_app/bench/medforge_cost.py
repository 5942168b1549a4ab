"""What a MedForge run costs against the one-shot run of the same seed, measured side by side.

Both runs are real Flower simulations started one after the other in one invocation (same
machine, same load window), on the same preset and seed; the ratio of their wall times is the
figure (`docs/medforge.md`), with each run's time by phase (results.json `profile`) beside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.config import compose_experiment
from fl_app.report.table import method_traffic
from fl_app.server.status import COMPLETED
from fl_app.simulation import run_simulation
from fl_app.validation import validate_experiment


@dataclass(frozen=True)
class CostRow:
    label: str
    folder: str
    wall_seconds: float  # results.json: from the ServerApp's start to its results
    launch_seconds: float  # from the launch to the end of the simulation (start-up included)
    upload_bytes: int
    download_bytes: int
    profile: dict[str, float]
    load: float  # 1-minute load average at the end


def run_one(label: str, overrides: Sequence[str], folder: Path) -> CostRow:
    cfg = compose_experiment(list(overrides))
    validate_experiment(cfg)
    launched = time.time()
    run_simulation(cfg, folder, quiet=True)
    ended = time.time()
    results = json.loads((folder / "results.json").read_text())
    if results.get("status") != COMPLETED:
        raise RuntimeError(f"{label}: the run in {folder} ended {results.get('status')}: {results.get('error')}")
    traffic = method_traffic(results)
    return CostRow(
        label,
        str(folder),
        float(results["wall_seconds"]),
        ended - launched,
        int(traffic.get("upload_bytes", 0)),
        int(traffic.get("download_bytes", 0)),
        dict(results.get("profile") or {}),
        os.getloadavg()[0],
    )


def cost_ratio(baseline: CostRow, candidate: CostRow) -> dict[str, Any]:
    return {
        "wall_ratio": candidate.wall_seconds / baseline.wall_seconds,
        "launch_ratio": candidate.launch_seconds / baseline.launch_seconds,
        "bytes_ratio": (candidate.upload_bytes + candidate.download_bytes)
        / max(1, baseline.upload_bytes + baseline.download_bytes),
    }

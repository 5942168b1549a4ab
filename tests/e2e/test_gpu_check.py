"""`scripts/gpu_check.sh` runs its whole path on a CPU machine (--cpu-smoke), so it is ready for a GPU one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_gpu_check_cpu_smoke_prints_the_benchmark_row(tmp_path):
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "GPU_CHECK_JSON": str(tmp_path / "rows.json")}

    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["strategy"], r["n"]) for r in rows] == [("one_shot", 3)]
    assert rows[0]["rest_s"] > 0 and rows[0]["floor_s"] > 0 and rows[0]["upload_bytes"] > 0
    assert "SUMMARY" in completed.stdout

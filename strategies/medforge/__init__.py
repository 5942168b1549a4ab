"""MedForge (Tan et al. 2025, arXiv 2502.16055): merge hospital adapters with coefficients searched
on distilled calibration sets, progressively as hospitals arrive and in one shot.

- fusion.py    MedForge-Fusion math (parameter space; ΔW-exact or the reference's factor-wise form)
- search.py    nevergrad coefficient search
- scoring.py   calibration-set logits of a candidate model (server side)
- branches.py  the main branch: one version per arrival, and the one-shot variant
- runner.py    the Flower side: train messages, arrival order, versions
MedForge-Mixture's output-space math is shared with the hospitals, so it lives below the strategies:
fl_app/model/mixture.py. The calibration sets themselves are distilled at the hospital: fl_app/calibration/.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_medforge"]


def __getattr__(name: str) -> Any:
    """`run_medforge` on first use: importing `strategies.medforge.settings` must not load Flower or nevergrad."""
    if name == "run_medforge":
        from strategies.medforge.runner import run_medforge

        return run_medforge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

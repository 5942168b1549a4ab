"""MedForge (Tan et al. 2025, arXiv 2502.16055): merge hospital adapters with coefficients searched
on distilled calibration sets, progressively as hospitals arrive and in one shot.

- fusion.py    MedForge-Fusion math (parameter space; ΔW-exact or the reference's factor-wise form)
- mixture.py   MedForge-Mixture math (output space)
- search.py    nevergrad coefficient search
- scoring.py   calibration-set logits of a candidate model (server side)
- branches.py  the main branch: one version per arrival, and the one-shot variant
- runner.py    the Flower side: train messages, arrival order, versions
The calibration sets themselves are distilled at the hospital: fl_app/calibration/.
"""

from strategies.medforge.runner import run_medforge

__all__ = ["run_medforge"]

"""Calibration sets: what a hospital distils from its data so the server can choose merge coefficients."""

from fl_app.calibration.distill import CalibrationSet, DistillSettings, distill_calibration_set, matching_loss
from fl_app.calibration.records import calibration_records, decode_calibration

__all__ = [
    "CalibrationSet",
    "DistillSettings",
    "calibration_records",
    "decode_calibration",
    "distill_calibration_set",
    "matching_loss",
]

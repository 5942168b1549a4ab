"""A calibration set on the wire: one ArrayRecord (images, labels) and one ConfigRecord (provenance)."""

from __future__ import annotations

import math
from collections import OrderedDict

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fl_app.calibration.distill import CalibrationSet

CALIBRATION = "calibration"
CALIBRATION_INFO = "calibration-info"


def calibration_records(calibration: CalibrationSet) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records a train reply carries when the merge method asked for a calibration set."""
    arrays = ArrayRecord(OrderedDict(images=Array(calibration.images), labels=Array(calibration.labels)))
    fields = {
        "task": calibration.task,
        "init": calibration.init,
        "loss-before": calibration.loss_before,
        "loss-after": calibration.loss_after,
        "seconds": calibration.seconds,
        "dp-epsilon": calibration.epsilon,
    }
    if math.isfinite(calibration.epsilon):  # a DP set: its timing depends on the data, and is not accounted
        del fields["seconds"]
    info = ConfigRecord(fields)
    return {CALIBRATION: arrays, CALIBRATION_INFO: info}


def decode_calibration(content: RecordDict) -> CalibrationSet | None:
    """The calibration set of a train reply, or None when it carries none."""
    if CALIBRATION not in content:
        return None
    if CALIBRATION_INFO not in content:
        raise ValueError(f"a train reply has a {CALIBRATION!r} record but no {CALIBRATION_INFO!r} record.")
    arrays, info = content[CALIBRATION], content[CALIBRATION_INFO]
    return CalibrationSet(
        task=str(info["task"]),
        images=arrays["images"].numpy(),
        labels=arrays["labels"].numpy(),
        init=str(info["init"]),
        loss_before=float(info["loss-before"]),
        loss_after=float(info["loss-after"]),
        seconds=float(info.get("seconds", math.nan)),
        epsilon=float(info.get("dp-epsilon", math.nan)),
    )

"""Federated evaluation pieces (fl_app/server/evaluation.py): per-task pooling of ACC and AUC."""

from __future__ import annotations

import numpy as np
import pytest

from fl_app.pooled_auc import AUC_BINS
from fl_app.server.evaluation import HospitalScores, mean_over_tasks, per_task_metrics


def _histogram(positives: list[int], negatives: list[int]) -> np.ndarray:
    """A one-column histogram with scores at the given bins."""
    hist = np.zeros((1, 2, AUC_BINS), dtype=np.int64)
    np.add.at(hist[0, 0], positives, 1)
    np.add.at(hist[0, 1], negatives, 1)
    return hist.ravel()


def test_accuracy_pools_by_test_size_and_auc_pools_the_histograms():
    scores = [
        # hospital 0 ranks its own cases perfectly, but its positives score below hospital 1's negatives
        HospitalScores(0, "breastmnist", 100, {"merged/acc": 0.9, "merged/auc-hist": _histogram([300], [100])}),
        HospitalScores(1, "breastmnist", 300, {"merged/acc": 0.5, "merged/auc-hist": _histogram([900], [500])}),
        HospitalScores(2, "bloodmnist", 50, {"merged/acc": 0.4, "merged/auc-hist": _histogram([], [10])}),  # undefined
    ]

    per_task = per_task_metrics(scores, "merged")

    assert per_task["breastmnist"]["acc"] == pytest.approx((0.9 * 100 + 0.5 * 300) / 400)
    assert per_task["breastmnist"]["auc"] == pytest.approx(3 / 4)  # pairs: (300>100) (300<500) (900>100) (900>500)
    assert per_task["bloodmnist"]["auc"] is None
    assert mean_over_tasks(per_task, "acc") == pytest.approx((0.6 + 0.4) / 2)


def test_scores_from_a_node_claiming_a_bound_hospital_are_refused():
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fl_app.protocol import HOSPITAL, METRICS
    from fl_app.server.evaluation import decode_scores

    def reply(node: int, hospital: int) -> SimpleNamespace:
        content = RecordDict(
            {
                HOSPITAL: ConfigRecord({"hospital-id": hospital, "task": "breastmnist", "n-test": 10}),
                METRICS: MetricRecord({"merged/acc": 0.5}),
            }
        )
        return SimpleNamespace(content=content, metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False)

    scores, failures, answered = decode_scores([reply(100, 0), reply(7, 0), reply(101, 1)], bound={100: 0, 101: 1})

    assert [s.hospital_id for s in scores] == [0, 1] and answered == {100: 0, 101: 1}
    assert [(f.node_id, f.hospital_id, f.reason) for f in failures] == [(7, 0, "rejected")]

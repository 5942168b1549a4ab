"""Evaluate model versions at every hospital in this process: the hospitals' own steps, no Flower."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from fl_app.config import hospital_payload
from fl_app.hospital_steps import Hospital, simulated_hospital
from fl_app.server.evaluation import HospitalScores, hospital_scores, versions_content
from strategies.outcome import ModelVersion

logger = logging.getLogger("medforge.remerge")


def _check_same_data(hospital: Hospital, recorded: Mapping[str, Any] | None, data_root: str) -> None:
    """The hospital must see the test split the run saw, or the new numbers are not comparable."""
    if recorded is None:
        return
    now = (hospital.data.data_source, len(hospital.data.test))
    then = (recorded.get("data_source"), int(recorded.get("n_test", now[1])))
    if now != then:
        raise RuntimeError(
            f"hospital {hospital.id} now has {now[0]} data with {now[1]} test images, but the run used {then[0]} data "
            f"with {then[1]}: the data under data.root={data_root} is not what the run read. Pass --data-root with the run's data folder."
        )


def evaluate_at_hospitals(
    experiment: DictConfig,
    versions: Sequence[ModelVersion],
    hospital_ids: Sequence[int],
    recorded: Mapping[int, Mapping[str, Any]],
) -> list[HospitalScores]:
    """Every version's test scores at every hospital in `hospital_ids` (one batched evaluation each)."""
    payload = hospital_payload(experiment)
    content = versions_content(versions, payload)
    experiment_dict = json.loads(payload)
    num_hospitals = int(experiment.simulation.num_hospitals)
    scores = []
    for i, hospital_id in enumerate(hospital_ids, start=1):
        hospital = simulated_hospital(experiment_dict, hospital_id, num_hospitals)
        _check_same_data(hospital, recorded.get(hospital_id), str(experiment.data.root))
        logger.info(
            "Evaluating %d version(s) at hospital %d (%d/%d): %s, %d test images",
            len(versions),
            hospital_id,
            i,
            len(hospital_ids),
            hospital.task,
            len(hospital.data.test),
        )
        scores.append(hospital_scores(hospital.evaluate(content)))
    return scores

"""The main branch's view of its calibration sets: logits of a candidate model on each of them.

Runs in the server process with the same frozen backbone the hospitals use (built once).
The score is the cross-entropy on logits, averaged over the hospitals' calibration sets so that
each hospital counts once whatever its number of classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fl_app.calibration import CalibrationSet
from fl_app.data import experiment_tasks
from fl_app.model.backbone import backbone_image_size
from fl_app.model.lora import hospital_model
from fl_app.training import task_loss, task_scores, to_pixels


class CalibrationScorer:
    """Scores candidate adapters on the calibration sets of the hospitals merged so far."""

    def __init__(self, experiment: Mapping[str, Any]) -> None:
        self.tasks = experiment_tasks(experiment["data"])  # MedMNIST flags, or a deployment's declared tasks
        self.lora = experiment["lora"]
        self.model = hospital_model(experiment["model"], {name: task.n_outputs for name, task in self.tasks.items()})
        self.image_size = backbone_image_size(self.model.backbone)
        self.sets: dict[int, CalibrationSet] = {}
        self._pixels: dict[int, Tensor] = {}

    def add(self, hospital_id: int, calibration: CalibrationSet) -> None:
        self.sets[hospital_id] = calibration
        self._pixels[hospital_id] = to_pixels(calibration.images, self.image_size)

    @torch.no_grad()
    def logits(
        self, state: Mapping[str, Tensor], rank: int, alpha: float, hospital_ids: Sequence[int]
    ) -> dict[int, Tensor]:
        """Logits of the model `state` (LoRA + heads) on each listed hospital's calibration set."""
        name = self.model.use_adapter(self.lora, rank=rank, alpha=alpha)
        tasks = sorted({self.sets[h].task for h in hospital_ids})
        self.model.load_adapter_state(name, state, tasks)
        self.model.peft.eval()
        return {h: self.model.peft(pixel_values=self._pixels[h], task=self.sets[h].task) for h in hospital_ids}

    def probabilities(
        self, state: Mapping[str, Tensor], rank: int, alpha: float, hospital_ids: Sequence[int]
    ) -> dict[int, Tensor]:
        return {
            h: task_scores(self.tasks[self.sets[h].task], z)
            for h, z in self.logits(state, rank, alpha, hospital_ids).items()
        }

    def cross_entropy(self, logits: Mapping[int, Tensor]) -> float:
        """Mean over calibration sets of the cross-entropy on logits."""
        losses = [
            float(task_loss(self.tasks[self.sets[h].task], z, torch.from_numpy(self.sets[h].labels)))
            for h, z in logits.items()
        ]
        return sum(losses) / len(losses)

    def labels(self, hospital_id: int) -> Tensor:
        return torch.from_numpy(self.sets[hospital_id].labels)

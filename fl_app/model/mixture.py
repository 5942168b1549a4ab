"""MedForge-Mixture: keep every adapter and mix their predictions, in output space.

q(y|x) = Σ_j c_j · softmax(f_j(x)), clipped at `FLOOR` (coefficients may be negative: the search
bounds allow it). Predictions are q renormalised per row. The searched loss is the generalised
Kullback-Leibler divergence of the one-hot label from q, -log q_y + Σ_k q_k - 1: equal to the
cross-entropy when q sums to one, and not blind to the scale of the coefficients (a plain
renormalised cross-entropy is, so the L1 term would shrink every coefficient towards zero).
The reference code instead applied CrossEntropyLoss to these probabilities (a second softmax).

The math is torch-only, so hospitals (which evaluate mixture versions) and the server's
coefficient search (strategies/medforge/branches.py) share it without the hospital importing a
strategy. A saved mixture folder holds `mixture.json` (coefficients) and one PEFT adapter per
component under `components/<name>/`; `load_mixture` loads each component as a named PEFT adapter
on one classifier, and a prediction runs one forward pass per component and mixes the probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor, nn

MIXTURE_FILE = "mixture.json"
FLOOR = 1e-6


def mixture_scores(component_probabilities: Sequence[Tensor], coefficients: Sequence[float]) -> Tensor:
    """q = Σ_j c_j p_j, clipped at FLOOR; not renormalised."""
    if len(component_probabilities) != len(coefficients) or not coefficients:
        raise ValueError(
            f"got {len(component_probabilities)} components and {len(coefficients)} coefficients; pass one coefficient per adapter (at least one)."
        )
    return sum(c * p for c, p in zip(coefficients, component_probabilities)).clamp_min(FLOOR)


def mixture_probabilities(component_probabilities: Sequence[Tensor], coefficients: Sequence[float]) -> Tensor:
    """The mixture's prediction: q renormalised per row."""
    q = mixture_scores(component_probabilities, coefficients)
    return q / q.sum(dim=-1, keepdim=True)


def mixture_loss(scores: Tensor, labels: Tensor) -> float:
    """Mean generalised KL divergence -log q_y + Σ_k q_k - 1 (labels (N,) or (N, 1) class indices)."""
    labels = labels.reshape(-1).long()
    return float((-torch.log(scores[torch.arange(len(labels)), labels]) + scores.sum(dim=-1) - 1).mean())


class MixtureClassifier(nn.Module):
    """Σ_j c_j · softmax(f_j(x)) over the components of a saved mixture, renormalised."""

    def __init__(self, peft: PeftModel, coefficients: dict[str, float]) -> None:
        super().__init__()
        self.peft = peft
        self.coefficients = coefficients

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, task: str) -> torch.Tensor:
        probabilities = []
        for name in self.coefficients:
            self.peft.set_adapter(name)
            # single-label tasks only (MedForge refuses multi-label ones): softmax, whatever the task's name
            probabilities.append(torch.softmax(self.peft(pixel_values=pixel_values, task=task), dim=-1))
        return mixture_probabilities(probabilities, list(self.coefficients.values()))


def load_mixture(classifier: nn.Module, folder: Path | str) -> MixtureClassifier:
    """Wrap `classifier` (a fresh MedForgeClassifier on the run's backbone) with the mixture in `folder`."""
    folder = Path(folder)
    spec_path = folder / MIXTURE_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{spec_path} not found: {folder} is not a MedForge-Mixture version folder (load other versions with PeftModel.from_pretrained)."
        )
    components = json.loads(spec_path.read_text())["components"]
    peft = None
    for name, component in components.items():
        path = str(folder / component["adapter"])
        if peft is None:
            peft = PeftModel.from_pretrained(classifier, path, adapter_name=name)
        else:
            peft.load_adapter(path, adapter_name=name)
    peft.eval()
    return MixtureClassifier(peft, {name: float(c["coefficient"]) for name, c in components.items()})

"""Load a saved MedForge-Mixture version with PEFT and predict with it.

A mixture folder holds `mixture.json` (coefficients) and one PEFT adapter per component under
`components/<name>/`. Each component is loaded as a named PEFT adapter on one classifier; a
prediction runs one forward pass per component and mixes the probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from strategies.medforge.mixture import mixture_probabilities

MIXTURE_FILE = "mixture.json"


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
        raise FileNotFoundError(f"{spec_path} not found: {folder} is not a MedForge-Mixture version folder (load other versions with PeftModel.from_pretrained).")
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

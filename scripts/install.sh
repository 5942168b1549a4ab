#!/usr/bin/env bash
# Install MedForge into a virtual environment (default .venv; set VENV=... to choose).
# CPU torch 2.13.0 from local disk, the project with its test extras, and medmnist without its
# torchvision requirement (medmnist only imports torchvision for downloads; see docs/architecture.md, "Installing").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt "torch==2.13.0"
"${PIP[@]}" install -c constraints.txt -e ".[test]"
"${PIP[@]}" install --no-deps "medmnist==3.0.2"
"$VENV/bin/python" -c "import torch, transformers, peft, flwr, medmnist; print('MedForge installed: torch', torch.__version__, '| flwr', flwr.__version__, '| cuda build:', torch.version.cuda is not None)"

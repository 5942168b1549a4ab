#!/usr/bin/env bash
# One-GPU check of the simulation: 8 hospitals, a ViT-B/16-sized backbone, 0.25 GPU per hospital
# (four hospitals share the GPU), one-shot merge through Flower's Ray backend, against the same
# work in one process on the same GPU (scripts/bench_sim.py's plain loop). Prints the benchmark
# table plus training+evaluation throughput (images/s) of both. About 3-5 minutes on an H100.
#
#   bash scripts/gpu_check.sh               # on a machine with one NVIDIA GPU
#   bash scripts/gpu_check.sh --cpu-smoke   # the same path on CPU, tiny model, 3 hospitals (a few minutes)
#
# Needs only the project: it runs scripts/install.sh when .venv is missing. install.sh pins torch
# to the CPU build that lies on the development machines' disk; when this machine has a GPU but
# that torch cannot see it, the CUDA build of the same torch version is installed from PyPI
# (whose Linux torch wheels are CUDA builds; TORCH_INDEX=<url> picks another index, e.g. a
# download.pytorch.org/whl/cu12x mirror). The backbone is google/vit-base-patch16-224-in21k when it
# is in the Hugging Face cache, else the same architecture with random frozen weights (throughput
# does not depend on the weights).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
MODE="gpu"
[ "${1:-}" = "--cpu-smoke" ] && MODE="cpu-smoke"

[ -x "$PY" ] || bash scripts/install.sh

if [ "$MODE" = "gpu" ]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check: no nvidia-smi, so no NVIDIA GPU here; run 'bash scripts/gpu_check.sh --cpu-smoke' to try the path on CPU." >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    version="$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")"
    echo "gpu_check: torch $version in $VENV cannot see the GPU (a CPU build); installing the CUDA build of torch $version."
    index=()
    [ -n "${TORCH_INDEX:-}" ] && index=(--index-url "$TORCH_INDEX")
    # --isolated: ignore a machine-wide pip config that prefers the local CPU wheel
    "$PY" -m pip install --isolated -q --force-reinstall --no-deps "${index[@]}" "torch==$version"
    "$PY" -m pip install --isolated -q "${index[@]}" "torch==$version"  # its CUDA runtime libraries
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch still sees no GPU: check the driver (nvidia-smi) and TORCH_INDEX'; print('torch', torch.__version__, 'sees', torch.cuda.get_device_name(0))"
  fi
  if "$PY" -c "from transformers import ViTModel; ViTModel.from_pretrained('google/vit-base-patch16-224-in21k', local_files_only=True)" >/dev/null 2>&1; then
    model="vit_base_in21k"
  else
    model="vit_base_random"
  fi
  args=(--n 8 --strategies one_shot --model "$model" --client-gpus 0.25 --client-cpus 2 --ray-cpus 0
        --flag pathmnist --max-train 512 --max-eval 256 --epochs 1
        --override train.batch_size=64 eval.batch_size=256)
else
  args=(--n 3 --strategies one_shot --model tiny_vit --client-gpus 0 --client-cpus 1 --ray-cpus 1
        --flag bloodmnist --max-train 32 --max-eval 16 --epochs 1)
fi

echo "gpu_check ($MODE): scripts/bench_sim.py ${args[*]}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/bench_sim.py "${args[@]}" --json "${GPU_CHECK_JSON:-/tmp/gpu_check.json}"
if [ "$MODE" = "gpu" ]; then
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
fi
echo "gpu_check: done; rows in ${GPU_CHECK_JSON:-/tmp/gpu_check.json}"

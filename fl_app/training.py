"""Local training and evaluation of a hospital's adapter: plain PyTorch, no Flower.

Metrics are MedMNIST's own definitions (`medmnist.evaluator.getACC`, and `getAUC`'s value).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from medmnist.evaluator import getACC
from torch import nn

from fl_app.data import SplitArrays, TaskInfo
from fl_app.pooled_auc import split_auc

OPTIMIZERS = ("adamw", "sgd")


def pick_device() -> torch.device:
    """The GPU Ray assigned to this worker, else the CPU; outside Ray, any visible GPU.

    Ray narrows CUDA_VISIBLE_DEVICES of a worker to the GPU it assigned (so `cuda` is that GPU),
    but leaves it untouched for workers given no GPU (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0):
    those must stay on the CPU, not crowd onto GPU 0 unreserved.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    assigned = ray_assigned_gpus()
    return torch.device("cpu" if assigned is not None and not assigned else "cuda")


def ray_assigned_gpus() -> list[str] | None:
    """The GPU ids Ray gave this process, or None when it is not a Ray worker."""
    ray = sys.modules.get("ray")  # imported by every Ray worker; never imported here for nothing
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return list(context.get_accelerator_ids().get("GPU", []))


def unit_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) -> float (N,C,H,W) in [0, 1], C = 1 or 3: the space calibration images live in."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)


def model_pixels(unit: torch.Tensor, image_size: int) -> torch.Tensor:
    """float (N,C,H,W) in [0, 1] -> (N,3,S,S) in [-1, 1] at the backbone's input size; differentiable."""
    pixels = unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit
    if pixels.shape[-1] != image_size or pixels.shape[-2] != image_size:
        pixels = nn.functional.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (pixels - 0.5) / 0.5


def to_pixels(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) -> float (N,3,S,S) in [-1, 1], resized to the backbone's input."""
    return model_pixels(unit_images(images), image_size)


def task_loss(task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on logits (BCE per label for multi-label tasks)."""
    if task.multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    return nn.functional.cross_entropy(logits, labels[:, 0].long())


def task_scores(task: TaskInfo, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities in the form MedMNIST's evaluator expects."""
    return torch.sigmoid(logits) if task.multi_label else torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "adamw"
    weight_decay: float = 0.0


def train_adapter(
    model: nn.Module, task: TaskInfo, split: SplitArrays, settings: TrainSettings, image_size: int, seed: int, device: torch.device
) -> float:
    """Fine-tune the trainable (LoRA + head) parameters; return the mean loss of the last epoch."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], settings)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(split.labels)
    model.train()
    epoch_loss = math.nan
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout draws too: the same run trains the same adapter in any process
        for _ in range(settings.epochs):
            order = torch.randperm(len(split), generator=generator).numpy()
            total, seen = 0.0, 0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                pixels = to_pixels(split.images[batch], image_size).to(device)
                loss = task_loss(task, model(pixel_values=pixels, task=task.name), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            epoch_loss = total / max(seen, 1)
    model.eval()
    return epoch_loss


def make_optimizer(parameters: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    raise ValueError(f"train.optimizer={settings.optimizer!r} is not valid; choose one of {OPTIMIZERS}.")


@torch.no_grad()
def predict_scores(model: nn.Module, task: TaskInfo, split: SplitArrays, image_size: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Class (or label) probabilities for every image of `split`."""
    model.eval()
    scores = []
    for start in range(0, len(split), batch_size):
        pixels = to_pixels(split.images[start : start + batch_size], image_size).to(device)
        scores.append(task_scores(task, model(pixel_values=pixels, task=task.name)).float().cpu())
    return torch.cat(scores).numpy()


def medmnist_metrics(task: TaskInfo, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ACC and AUC as MedMNIST defines them (getACC; getAUC's value via `split_auc`); AUC is NaN
    when a split lacks a class."""
    return {"acc": float(getACC(labels, scores, task.task_type)), "auc": split_auc(task, labels, scores)}

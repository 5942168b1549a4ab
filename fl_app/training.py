"""Local training and evaluation of a hospital's adapter: plain PyTorch, no Flower.

Metrics are MedMNIST's own definitions (`medmnist.evaluator.getACC`'s value via `medmnist_accuracy`,
and `getAUC`'s value via `split_auc`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
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


def task_loss(
    task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy on logits (BCE per label for multi-label tasks), optionally class-weighted."""
    if task.multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    return nn.functional.cross_entropy(logits, labels[:, 0].long(), weight=class_weight)


def task_scores(task: TaskInfo, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities in the form MedMNIST's evaluator expects."""
    return torch.sigmoid(logits) if task.multi_label else torch.softmax(logits, dim=-1)


SCHEDULES = ("constant", "onecycle", "cosine")
CLASS_WEIGHTINGS = ("none", "balanced")


@dataclass(frozen=True)
class TrainSettings:
    """The local recipe (conf `train`): tuned on the real validation splits, never on test."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle (warm-up 15%, then cosine down) | cosine
    augment: bool = False  # random horizontal flips (label-preserving for these MedMNIST tasks)
    class_weighting: str = "none"  # none | balanced: cross-entropy weights n / (k · n_class) against imbalance
    early_stopping: bool = False  # keep the epoch with the best validation AUC (ACC where AUC is undefined)


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss of the last epoch run
    best_epoch: int  # 1-based epoch whose weights were kept (the last one without early stopping)
    val_score: float  # the kept epoch's validation score (NaN without early stopping)


def train_settings(train: Mapping[str, Any]) -> TrainSettings:
    """The local recipe from the experiment's `train` section."""
    return TrainSettings(
        epochs=int(train["local_epochs"]),
        lr=float(train["lr"]),
        batch_size=int(train["batch_size"]),
        optimizer=str(train["optimizer"]),
        weight_decay=float(train.get("weight_decay", 0.0)),
        schedule=str(train.get("schedule", "constant")),
        augment=bool(train.get("augment", False)),
        class_weighting=str(train.get("class_weighting", "none")),
        early_stopping=bool(train.get("early_stopping", False)),
    )


def validation_score(metrics: Mapping[str, float]) -> float:
    """What early stopping maximises: validation AUC, or ACC where AUC is undefined (one-class split)."""
    return metrics["auc"] if not math.isnan(metrics["auc"]) else metrics["acc"]


def class_weights(task: TaskInfo, labels: np.ndarray, scheme: str) -> torch.Tensor | None:
    """Cross-entropy class weights: `balanced` = n / (k · n_c) (sklearn's), None for `none` or multi-label."""
    if scheme not in CLASS_WEIGHTINGS:
        raise ValueError(f"train.class_weighting={scheme!r} is not valid; choose one of {CLASS_WEIGHTINGS}.")
    if scheme == "none" or task.multi_label:
        return None
    counts = np.bincount(labels[:, 0], minlength=task.n_outputs).astype(np.float64)
    return torch.tensor(len(labels) / (task.n_outputs * np.maximum(counts, 1.0)), dtype=torch.float32)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int):
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={settings.schedule!r} is not valid; choose one of {SCHEDULES}.")
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=max(total_steps, 1), pct_start=0.15
        )
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return None


def train_adapter(
    model: nn.Module,
    task: TaskInfo,
    split: SplitArrays,
    settings: TrainSettings,
    image_size: int,
    seed: int,
    device: torch.device,
    validate: Callable[[], float] | None = None,
) -> TrainResult:
    """Fine-tune the trainable (LoRA + head) parameters on one task's split.

    With `settings.early_stopping` and a `validate` callback (the hospital's own validation score,
    higher is better), the weights of the best epoch are restored at the end.
    """
    return train_adapter_on_tasks(model, [(task, split)], settings, image_size, seed, device, validate)


def train_adapter_on_tasks(
    model: nn.Module,
    parts: Sequence[tuple[TaskInfo, SplitArrays]],
    settings: TrainSettings,
    image_size: int,
    seed: int,
    device: torch.device,
    validate: Callable[[], float] | None = None,
) -> TrainResult:
    """`train_adapter` over several tasks at once (each batch from one task, through its head; the
    batches of all tasks shuffled together): the centralised reference trains this way on pooled data."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(list(trainable.values()), settings)
    steps_per_epoch = sum(math.ceil(len(split) / settings.batch_size) for _, split in parts)
    scheduler = make_scheduler(optimizer, settings, settings.epochs * steps_per_epoch)
    weights = [class_weights(task, split.labels, settings.class_weighting) for task, split in parts]
    weights = [w.to(device) if w is not None else None for w in weights]
    labels = [torch.from_numpy(split.labels) for _, split in parts]
    generator = torch.Generator().manual_seed(seed)
    epoch_loss, best = math.nan, (-math.inf, settings.epochs, None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout draws too: the same run trains the same adapter in any process
        for epoch in range(1, settings.epochs + 1):
            model.train()
            batches = []
            for index, (_, split) in enumerate(parts):
                order = torch.randperm(len(split), generator=generator).numpy()
                batches += [
                    (index, order[start : start + settings.batch_size])
                    for start in range(0, len(order), settings.batch_size)
                ]
            if len(parts) > 1:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            total, seen = 0.0, 0
            for index, batch in batches:
                task, split = parts[index]
                pixels = to_pixels(split.images[batch], image_size)
                if settings.augment:
                    flip = torch.rand(len(batch), generator=generator) < 0.5
                    pixels[flip] = pixels[flip].flip(-1)
                logits = model(pixel_values=pixels.to(device), task=task.name)
                loss = task_loss(task, logits, labels[index][batch].to(device), weights[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            epoch_loss = total / max(seen, 1)
            if settings.early_stopping and validate is not None:
                model.eval()
                score = validate()
                if score > best[0]:
                    best = (score, epoch, {name: p.detach().clone() for name, p in trainable.items()})
    if best[2] is not None:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(best[2][name])
    model.eval()
    return TrainResult(loss=epoch_loss, best_epoch=best[1], val_score=best[0] if best[2] is not None else math.nan)


def make_optimizer(parameters: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    raise ValueError(f"train.optimizer={settings.optimizer!r} is not valid; choose one of {OPTIMIZERS}.")


@torch.no_grad()
def predict_scores(
    model: nn.Module, task: TaskInfo, split: SplitArrays, image_size: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """Class (or label) probabilities for every image of `split`."""
    model.eval()
    scores = []
    for start in range(0, len(split), batch_size):
        pixels = to_pixels(split.images[start : start + batch_size], image_size).to(device)
        scores.append(task_scores(task, model(pixel_values=pixels, task=task.name)).float().cpu())
    return torch.cat(scores).numpy()


def medmnist_accuracy(labels: np.ndarray, scores: np.ndarray, task_type: str, threshold: float = 0.5) -> float:
    """MedMNIST's `getACC` (medmnist/evaluator.py), value for value, without importing medmnist and
    scikit-learn (~1 s) in every hospital process: multi-label averages the per-label accuracy at
    `threshold`; binary thresholds the last column; multi-class and ordinal take the argmax.
    """
    labels, scores = labels.squeeze(), scores.squeeze()
    if task_type == "multi-label, binary-class":
        predicted = scores > threshold
        total = 0
        for label in range(labels.shape[1]):
            total += float(np.average(labels[:, label] == predicted[:, label]))
        return total / labels.shape[1]
    if task_type == "binary-class":
        positive = scores[:, -1] if scores.ndim == 2 else scores
        return float(np.average(labels == (positive > threshold)))
    return float(np.average(labels == np.argmax(scores, axis=-1)))


def medmnist_metrics(task: TaskInfo, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ACC and AUC as MedMNIST defines them (getACC's value via `medmnist_accuracy`, getAUC's via
    `split_auc`); AUC is NaN when a split lacks a class."""
    return {"acc": medmnist_accuracy(labels, scores, task.task_type), "auc": split_auc(task, labels, scores)}

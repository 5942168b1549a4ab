"""DP-SGD for a hospital's adapter (Abadi et al. 2016) with Opacus: per-sample clipping, Gaussian noise,
Poisson sampling.

Only the parameters the hospital trains and sends (LoRA, and its own task's head) get per-sample
gradients: Opacus's hooks on PEFT's LoRA `Linear`/`Conv2d` layers and on the head. The frozen backbone
needs nothing from Opacus; every batch-norm layer of any backbone is held in eval mode for the whole
of DP training (running statistics are frozen weights), so no sample's gradient depends on another's,
which DP-SGD requires, and no statistic of the private batch is written into the shared model.

Noise and Poisson batches come from a generator keyed by 63 bits of OS randomness (`secrets`) that
never leave the process, and Opacus's `secure_mode` noise (a sum of four Gaussians, against
floating-point attacks): the server cannot replay a step. Only a simulation may ask for a seed.
"""

from __future__ import annotations

import math
import secrets
import warnings

import torch
from torch import nn

from fl_app.data import SplitArrays, TaskInfo
from fl_app.privacy.accounting import Plan
from fl_app.training import TrainResult, TrainSettings, make_optimizer, make_scheduler, task_loss, to_pixels


def site_secret_seed() -> int:
    """A seed from OS randomness, known only to this process (never logged, never sent)."""
    return secrets.randbits(63)


def freeze_batch_norm(model: nn.Module, released: dict[str, nn.Parameter] | None = None) -> list[nn.Module]:
    """Put every batch-norm layer in eval mode (frozen running statistics, per-sample outputs); returns them.

    Refuses (ValueError) a batch-norm layer whose parameters are among the released ones: DP-SGD
    would need its batch statistics, which mix patients."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    trained = {id(p) for p in (released or {}).values()}
    for norm in norms:
        if any(id(p) in trained for p in norm.parameters()):
            raise ValueError(
                f"a batch-norm layer ({type(norm).__name__}) is among the parameters this hospital trains and "
                "releases; DP-SGD cannot train it (its statistics mix patients). Target other modules with LoRA."
            )
        norm.eval()
    return norms


def released_parameters(model: nn.Module, task: str) -> dict[str, nn.Parameter]:
    """The trainable parameters this task's training changes: LoRA factors and `heads.<task>`.

    Other tasks' heads are trainable in the PEFT model but never reached by this task's loss.
    """
    return {
        name: p
        for name, p in model.named_parameters()
        if p.requires_grad and (".lora_" in name or f"heads.{task}." in name)
    }


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`steps` batches, each record in each independently with probability q (what the accountant assumes).

    Batches vary in size and may be empty; a step is still taken (and noised) for an empty one.
    """
    return [torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten() for _ in range(steps)]


def train_adapter_dp(
    model: nn.Module,
    task: TaskInfo,
    split: SplitArrays,
    settings: TrainSettings,
    plan: Plan,
    max_grad_norm: float,
    image_size: int,
    seed: int | None,
    device: torch.device,
) -> TrainResult:
    """Fine-tune LoRA + this task's head with DP-SGD for `plan.steps` Poisson-sampled steps.

    seed: None (deployed sites, and simulations by default): noise, batches, flips and dropout from
    OS randomness only this process knows. An int (the simulation opt-in privacy.simulation.seeded_noise):
    the same run trains the same adapter, and whoever knows the seed knows the noise.
    The model keeps no Opacus hooks afterwards (the process-wide model is shared by later messages).
    The returned loss is for the hospital's own log: under DP it is not released.
    """
    from opacus import GradSampleModule  # here, not at import: a hospital without DP never loads Opacus
    from opacus.optimizers import DPOptimizer

    params = released_parameters(model, task.name)
    if not params:
        raise ValueError(f"no trainable LoRA or head parameters for task {task.name!r}: nothing to train under DP.")
    seed = site_secret_seed() if seed is None else int(seed)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    labels = torch.from_numpy(split.labels)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    optimizer = DPOptimizer(
        make_optimizer(list(params.values()), settings),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(plan.sample_rate * len(split))),
        loss_reduction="mean",
        generator=noise,
        secure_mode=True,  # Opacus's floating-point-attack-resistant noise (sum of Gaussians)
    )
    scheduler = make_scheduler(optimizer.original_optimizer, settings, plan.steps)
    total, seen = 0.0, 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # LoRA dropout draws
            model.train()
            freeze_batch_norm(
                model, params
            )  # any backbone's batch norm: frozen, never fed a private batch's statistics
            for batch in poisson_batches(len(split), plan.sample_rate, plan.steps, generator):
                optimizer.zero_grad(set_to_none=True)
                if len(batch) == 0:
                    for p in params.values():  # an empty Poisson batch: noise only, as the accountant assumes
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                else:
                    index = batch.numpy()
                    pixels = to_pixels(split.images[index], image_size)
                    if settings.augment:
                        flip = torch.rand(len(index), generator=generator) < 0.5
                        pixels[flip] = pixels[flip].flip(-1)
                    logits = wrapped(pixel_values=pixels.to(device), task=task.name)
                    loss = task_loss(task, logits, labels[batch].to(device))
                    with (
                        warnings.catch_warnings()
                    ):  # the pixels need no gradient: Opacus's hooks fire on outputs, as intended
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        loss.backward()
                    total += float(loss.detach()) * len(index)
                    seen += len(index)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad_sample = None
            if hasattr(p, "summed_grad"):
                p.summed_grad = None
        wrapped.to_standard_module()  # removes the hooks: the process-wide model is used by later messages
        model.eval()
    return TrainResult(loss=total / seen if seen else math.nan, best_epoch=settings.epochs, val_score=math.nan)

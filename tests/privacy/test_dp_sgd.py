"""DP-SGD at the hospital: clipping bounds each patient's influence, the noise is real and secret (seeded
only on request), and the shared model keeps no Opacus hooks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fl_app.hospital_steps import freeze_lora_a
from fl_app.privacy.accounting import Plan
from fl_app.privacy.dp_sgd import poisson_batches, released_parameters, train_adapter_dp
from fl_app.training import train_settings

ONE_STEP_SGD = [
    "train.optimizer=sgd",
    "train.lr=1.0",
    "train.weight_decay=0",
    "train.schedule=constant",
    "train.augment=false",
    "train.early_stopping=false",
    "train.class_weighting=none",
    "lora.dropout=0",
]


def released_vector(model, task: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in released_parameters(model, task).values()])


def dp_train(hospital, plan: Plan, max_grad_norm: float, seed: int | None = 0):
    settings = train_settings(hospital.experiment["train"])
    return train_adapter_dp(
        hospital.model.peft,
        hospital.data.task,
        hospital.data.train,
        settings,
        plan,
        max_grad_norm,
        hospital.image_size,
        seed,
        hospital.device,
    )


def full_batch_step(hospital, sigma: float = 0.0) -> Plan:
    """One step over every training image (q = 1): the batch is the whole split."""
    return Plan(noise_multiplier=sigma, sample_rate=1.0, steps=1, delta=1e-5)


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e-2])
def test_clipping_bounds_the_update_by_the_per_sample_norm(tiny_hospital, max_grad_norm):
    """q = 1, σ = 0, SGD lr 1, one step: the update is the mean of clipped per-sample gradients, so
    its norm is at most C. Without clipping (C huge) the same step moves much further."""
    hospital, _ = tiny_hospital(*ONE_STEP_SGD)
    before = released_vector(hospital.model.peft, hospital.task)
    dp_train(hospital, full_batch_step(hospital), max_grad_norm)
    clipped = (released_vector(hospital.model.peft, hospital.task) - before).norm()

    hospital, _ = tiny_hospital(*ONE_STEP_SGD)
    dp_train(hospital, full_batch_step(hospital), 1e6)
    unclipped = (released_vector(hospital.model.peft, hospital.task) - before).norm()

    assert 0 < clipped <= max_grad_norm * (1 + 1e-4)
    assert unclipped > 10 * max_grad_norm


def test_noise_is_applied_secret_by_default_and_seeded_only_on_request(tiny_hospital):
    results = {}
    runs = [("quiet", 0.0, 0), ("noisy", 1.0, 0), ("noisy again", 1.0, 0), ("other seed", 1.0, 1)]
    for label, sigma, seed in [*runs, ("secret", 1.0, None), ("secret again", 1.0, None)]:
        hospital, _ = tiny_hospital(*ONE_STEP_SGD, "train.lr=0.01")
        dp_train(hospital, Plan(sigma, 0.5, 3, 1e-5), 1.0, seed=seed)
        results[label] = released_vector(hospital.model.peft, hospital.task)

    assert not torch.allclose(results["quiet"], results["noisy"])
    assert torch.equal(results["noisy"], results["noisy again"])  # the simulation opt-in repeats exactly
    assert not torch.allclose(results["noisy"], results["other seed"])
    assert not torch.allclose(results["secret"], results["secret again"])  # OS randomness: no replay


def test_the_shared_model_keeps_no_opacus_hooks(tiny_hospital):
    hospital, _ = tiny_hospital()
    dp_train(hospital, Plan(1.0, 0.5, 2, 1e-5), 1.0)
    model = hospital.model.peft

    pixels = torch.rand(4, 3, 28, 28)
    model(pixel_values=pixels, task=hospital.task).sum().backward()

    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    assert not hasattr(model, "autograd_grad_sample_hooks")


def test_only_lora_and_the_own_head_are_trained_and_other_heads_stay(tiny_experiment):
    import json

    from fl_app.config import hospital_payload
    from fl_app.hospital_steps import simulated_hospital

    cfg = tiny_experiment()  # three tasks: three heads in the model
    hospital = simulated_hospital(json.loads(hospital_payload(cfg)), 0, 3)
    name = hospital.model.use_adapter(hospital.lora)
    hospital.model.reset_adapter(name, seed=0)
    heads = {n: p.detach().clone() for n, p in hospital.model.peft.named_parameters() if "heads." in n}
    dp_train(hospital, Plan(0.5, 0.5, 2, 1e-5), 1.0)

    released = set(released_parameters(hospital.model.peft, hospital.task))
    assert released and all(".lora_" in n or f"heads.{hospital.task}." in n for n in released)
    for n, p in hospital.model.peft.named_parameters():
        if "heads." in n and f"heads.{hospital.task}." not in n:
            assert torch.equal(p, heads[n]), n


def test_poisson_batches_sample_each_record_independently():
    generator = torch.Generator().manual_seed(0)
    batches = poisson_batches(1000, 0.1, 200, generator)

    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float)
    assert len(batches) == 200 and abs(sizes.mean().item() - 100) < 3
    assert sizes.std().item() > 5  # variable sizes: not fixed-size batches
    assert all(len(set(b.tolist())) == len(b) for b in batches)


def test_ffa_lora_keeps_a_at_its_init_under_dp(tiny_hospital):
    hospital, name = tiny_hospital()
    freeze_lora_a(hospital.model.peft, name, True)
    a_before = {n: p.detach().clone() for n, p in hospital.model.peft.named_parameters() if ".lora_A." in n}
    b_before = {n: p.detach().clone() for n, p in hospital.model.peft.named_parameters() if ".lora_B." in n}
    dp_train(hospital, Plan(0.5, 0.5, 3, 1e-5), 1.0)

    for n, p in hospital.model.peft.named_parameters():
        if ".lora_A." in n:
            assert torch.equal(p, a_before[n]) and not p.requires_grad
    assert any(not torch.equal(p, b_before[n]) for n, p in hospital.model.peft.named_parameters() if ".lora_B." in n)
    freeze_lora_a(hospital.model.peft, name, False)
    assert all(p.requires_grad for n, p in hospital.model.peft.named_parameters() if f".lora_A.{name}." in n)


def test_plan_is_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Plan(1.0, 0.1, 1, 1e-5).steps = 2

"""Benchmark the project's LoRA merges against PEFT's `add_weighted_adapter` on ViT-B/16-sized adapters.

N hospital adapters (r=16, alpha=32) on the q and v projections of 12 layers of 768x768 Linear
modules, named like HF ViT (`vit.encoder.layer.<i>.attention.attention.query|value`), are attached
to one PeftModel. For each method, in the same run and on the same inputs:

- wall time: minimum over --repeats of `merge_adapters(states, ...)` and of PEFT's
  `add_weighted_adapter(...)` (time.perf_counter; the two alternate within each repeat);
- peak memory: the highest sum of live tensor bytes allocated during one call, from PyTorch's
  memory profiler timeline (torch.profiler with profile_memory; a separate, untimed call);
- accuracy: max over modules of ||ΔW - ΔW_ref||_F / ||ΔW_ref||_F, where ΔW_ref is the method's
  ΔW computed explicitly in float64 (dense ΔW_i, the same trim/drop/sign decisions, float64 SVD for
  a truncated rank).

The project runs each method configured to compute what PEFT computes: fedit with weights w against
PEFT `linear` with weights w^2 (PEFT applies sqrt(w) to each factor), TIES with normalize="count",
DARE with the same seed (PEFT's global RNG is re-seeded after it initialises the new adapter).

    .venv/bin/python scripts/bench_merge.py                      # N = 2 8 32, every method
    .venv/bin/python scripts/bench_merge.py --n 8 --methods svd svd_r16 --repeats 5
    .venv/bin/python scripts/bench_merge.py --n 32 --methods svd_r16 --spectrum gapped   # the randomized path
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402

from fl_app.adapter_keys import LORA_A_SUFFIX, LORA_B_SUFFIX, lora_module  # noqa: E402
from strategies.merging import merge_adapters  # noqa: E402

LAYERS, HIDDEN, RANK, ALPHA = 12, 768, 16, 32
PREFIX = "base_model.model."


class ViTAttention(nn.Module):
    """Only what LoRA targets: the query and value projections of one ViT-B/16 layer."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)


class ViTLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.attention = ViTAttention()


class ViTProjections(nn.Module):
    """24 Linear(768, 768) named like transformers' ViTModel: vit.encoder.layer.<i>.attention.attention.query."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = nn.Module()
        self.vit.encoder = nn.Module()
        self.vit.encoder.layer = nn.ModuleList(ViTLayer() for _ in range(LAYERS))


def gapped_factors(n: int, g: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of n adapters of one module sharing RANK directions (singular values 1..0.1) plus 1e-4 noise:
    a spectrum with a gap at RANK, as when hospitals' updates agree on a few directions."""
    U = torch.linalg.qr(torch.randn(HIDDEN, RANK, generator=g)).Q
    V = torch.linalg.qr(torch.randn(HIDDEN, RANK, generator=g)).Q
    strengths = torch.logspace(0, -1, RANK)
    return [
        (
            V.T + 1e-4 * torch.randn(RANK, HIDDEN, generator=g),
            (U * strengths) @ torch.randn(RANK, RANK, generator=g) / math.sqrt(RANK)
            + 1e-4 * torch.randn(HIDDEN, RANK, generator=g),
        )
        for _ in range(n)
    ]


def hospitals(n: int, seed: int, spectrum: str = "random"):
    """A PeftModel holding adapters h0..h{n-1} with seeded A and B, and their state dicts.

    spectrum "random": independent Gaussian factors (a flat spectrum of Σ ΔW_i: no rank-16 gap);
    "gapped": `gapped_factors`.
    """
    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["query", "value"])
    model = get_peft_model(ViTProjections(), config, adapter_name="h0")
    for i in range(1, n):
        model.add_adapter(f"h{i}", config)
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "lora_A") and "h0" in module.lora_A:
            if spectrum == "gapped":
                for i, (A, B) in enumerate(gapped_factors(n, g)):
                    module.lora_A[f"h{i}"].weight.data.copy_(A)
                    module.lora_B[f"h{i}"].weight.data.copy_(B)
                continue
            for i in range(n):
                module.lora_A[f"h{i}"].weight.data.copy_(torch.randn(RANK, HIDDEN, generator=g) / math.sqrt(HIDDEN))
                module.lora_B[f"h{i}"].weight.data.copy_(0.02 * torch.randn(HIDDEN, RANK, generator=g))
    states = [get_peft_model_state_dict(model, adapter_name=f"h{i}") for i in range(n)]
    return model, states


@dataclass(frozen=True)
class Case:
    """One row kind: the project's method and parameters, and PEFT's combination computing the same ΔW."""

    label: str
    method: str
    peft: str | None
    rank: Callable[[int], int | None]  # by N
    params: dict[str, Any] = field(default_factory=dict)
    peft_weight: Callable[[float], float] = lambda w: w
    sparsify: str = "none"  # for the reference: none | magnitude | random
    consensus: bool = False


def cases(rank: int, density: float | None, seed: int) -> dict[str, Case]:
    def d(default: float) -> float:
        return default if density is None else density

    exact_rank = lambda n: min(n * RANK, HIDDEN)  # noqa: E731
    return {
        c.label: c
        for c in [
            Case("fedit", "fedit", "linear", lambda n: None, peft_weight=lambda w: w * w),
            Case("cat", "cat", "cat", lambda n: None),
            Case("svd", "svd", "svd", exact_rank),
            Case(f"svd_r{rank}", "svd", "svd", lambda n: rank),
            Case(
                "ties",
                "ties",
                "ties_svd",
                lambda n: rank,
                {"density": d(0.2), "normalize": "count"},
                sparsify="magnitude",
                consensus=True,
            ),
            Case(
                "dare_linear",
                "dare_linear",
                "dare_linear_svd",
                lambda n: rank,
                {"density": d(0.5), "seed": seed},
                sparsify="random",
            ),
            Case(
                "dare_ties",
                "dare_ties",
                "dare_ties_svd",
                lambda n: rank,
                {"density": d(0.5), "seed": seed, "normalize": "count"},
                sparsify="random",
                consensus=True,
            ),
            Case(
                "magnitude_prune",
                "magnitude_prune",
                "magnitude_prune_svd",
                lambda n: rank,
                {"density": d(0.2)},
                sparsify="magnitude",
            ),
            Case("knots", "knots", None, lambda n: rank, {"inner": "ties", "density": d(0.2)}),
        ]
    }


# the two merges


def run_project(case: Case, states, weights, rank):
    scales = [ALPHA / RANK] * len(states)
    return merge_adapters(
        states, scales, weights, ["task"] * len(states), rank=rank, method=case.method, params=case.params
    )


def project_deltas(result) -> dict[str, torch.Tensor]:
    modules = {lora_module(k) for k in result.state if k.endswith(LORA_A_SUFFIX)}
    return {
        m[len(PREFIX) :]: result.state[m + LORA_B_SUFFIX] @ result.state[m + LORA_A_SUFFIX] for m in sorted(modules)
    }


class PeftMerge:
    """add_weighted_adapter into a fresh adapter name; DARE: the global RNG is re-seeded after PEFT
    initialises the new adapter (it draws that initialisation from the same RNG as the masks)."""

    def __init__(self, model, case: Case, weights, rank, seed: int) -> None:
        self.model, self.case, self.rank, self.seed = model, case, rank, seed
        self.weights = [case.peft_weight(w) for w in weights]
        self.adapters = [n for n in model.peft_config if n.startswith("h")]
        self.count = 0
        self.name = ""

    def __call__(self) -> None:
        self.count += 1
        self.name = f"merged{self.count}"
        kwargs: dict[str, Any] = {}
        if self.case.peft.endswith("svd"):
            kwargs["svd_rank"] = self.rank
        if "density" in self.case.params:
            kwargs["density"] = self.case.params["density"]
        inject = self.model.base_model.inject_adapter
        if self.case.sparsify == "random":

            def inject_then_seed(*args, **kw):
                out = inject(*args, **kw)
                torch.manual_seed(self.seed)
                return out

            self.model.base_model.inject_adapter = inject_then_seed
        try:
            self.model.add_weighted_adapter(
                self.adapters, self.weights, self.name, combination_type=self.case.peft, **kwargs
            )
        finally:
            self.model.base_model.__dict__.pop("inject_adapter", None)

    def deltas(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self.model.base_model.model.named_modules():
            if hasattr(module, "lora_A") and self.name in module.lora_A:
                out[name] = module.get_delta_weight(self.name)
        return out

    def clean(self) -> None:
        if self.name in self.model.peft_config:
            self.model.delete_adapter(self.name)


# float64 reference


def reference_deltas(case: Case, states, weights, rank, seed: int) -> dict[str, torch.Tensor]:
    """The method's ΔW per module in float64; discrete decisions (top-k, masks, signs) on float32 ΔW_i as PEFT forms them."""
    s = ALPHA / RANK
    modules = [lora_module(k) for k in states[0] if k.endswith(LORA_A_SUFFIX)]  # state order, as the masks are drawn
    generator = torch.Generator().manual_seed(seed)
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    out = {}
    for m in modules:
        A = [st[m + LORA_A_SUFFIX] for st in states]
        B = [st[m + LORA_B_SUFFIX] for st in states]
        if case.method == "fedit":
            Bm = sum(wi * math.sqrt(s) * b.double() for wi, b in zip(weights, B))
            Am = sum(wi * math.sqrt(s) * a.double() for wi, a in zip(weights, A))
            out[m[len(PREFIX) :]] = Bm @ Am
            continue
        if case.method == "knots":
            delta = knots_reference(A, B, s, weights, case.params["density"])
        else:
            exact = torch.stack([s * (b.double() @ a.double()) for a, b in zip(A, B)])
            single = torch.stack([(b @ a) * s for a, b in zip(A, B)])  # float32, as PEFT's get_delta_weight
            keep = torch.ones_like(single, dtype=torch.bool)
            factor = 1.0
            if case.sparsify == "magnitude":
                flat = single.abs().reshape(len(states), -1)
                k = int(case.params["density"] * flat.shape[1])
                keep = (flat >= flat.topk(k, dim=1).values[:, -1:]).reshape(single.shape)
            elif case.sparsify == "random":
                keep = torch.bernoulli(torch.full_like(single, case.params["density"]), generator=generator).bool()
                factor = 1.0 / case.params["density"]
            kept = exact * keep * factor
            if case.consensus:
                kept32 = single * keep * factor
                agree = kept32.sign() == torch.where(kept32.sum(0) >= 0, 1.0, -1.0)
                delta = (w * kept * agree).sum(0) / agree.sum(0).clamp(min=1)
            else:
                delta = (w * kept).sum(0)
        cap = len(states) * RANK if case.sparsify == "none" and case.method != "knots" else HIDDEN
        if rank is not None and rank < min(cap, HIDDEN):
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            delta = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        out[m[len(PREFIX) :]] = delta
    return out


def knots_reference(A, B, s, weights, density) -> torch.Tensor:
    """KnOTS-TIES densely: SVD of [ΔW_1 ... ΔW_N], TIES (weighted disjoint mean) on S V_i^T."""
    deltas = [s * (b.double() @ a.double()) for a, b in zip(A, B)]
    U, S, Vh = torch.linalg.svd(torch.cat(deltas, dim=1), full_matrices=False)
    K = min(len(deltas) * RANK, HIDDEN)
    C = torch.stack(torch.split(S[:K, None] * Vh[:K], HIDDEN, dim=1))
    flat = C.reshape(len(deltas), -1)
    k = int(density * flat.shape[1])
    trimmed = (flat * (flat.abs() >= flat.abs().topk(k, dim=1).values[:, -1:])).reshape(C.shape)
    agree = trimmed.sign() == torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    return U[:, :K] @ ((w * trimmed * agree).sum(0) / (w.abs() * agree).sum(0).clamp(min=1e-300))


def max_relative_error(deltas: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    return max(
        (torch.linalg.norm(deltas[m].double() - ref) / torch.linalg.norm(ref)).item() for m, ref in reference.items()
    )


# measurement


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak of live tensor bytes allocated inside fn (PyTorch memory profiler timeline).

    Frees of tensors that existed before fn are not counted (an in-place op bumps a tensor's version,
    so creation and destruction are matched by tensor, not by (tensor, version)).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    timeline = prof._memory_profile().timeline
    preexisting = {tensor for _, action, (tensor, _), _ in timeline if action == Action.PREEXISTING}
    live = peak = 0
    for _, action, (tensor, _version), size in timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY and tensor not in preexisting:
            live -= size
        peak = max(peak, live)
    return peak


@dataclass
class Row:
    n: int
    label: str
    peft: str
    ours_s: float
    peft_s: float | None
    ours_mb: float | None
    peft_mb: float | None
    ours_err: float
    peft_err: float | None
    reported: float

    @property
    def speedup(self) -> float | None:
        return None if self.peft_s is None else self.peft_s / self.ours_s


def bench(n: int, selected: list[Case], args) -> list[Row]:
    model, states = hospitals(n, args.seed, args.spectrum)
    weights = [1.0 / n] * n
    rows = []
    for case in selected:
        rank = case.rank(n)
        peft = PeftMerge(model, case, weights, rank, args.seed) if case.peft else None
        ours_times, peft_times, result = [], [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = run_project(case, states, weights, rank)
            ours_times.append(time.perf_counter() - t)
            if peft is not None:
                peft.clean()
                t = time.perf_counter()
                peft()
                peft_times.append(time.perf_counter() - t)
        reference = reference_deltas(case, states, weights, rank, args.seed)
        ours_err = max_relative_error(project_deltas(result), reference)
        peft_err = None if peft is None else max_relative_error(peft.deltas(), reference)
        ours_mb = peft_mb = None
        if not args.no_memory:
            ours_mb = peak_tensor_bytes(lambda case=case, rank=rank: run_project(case, states, weights, rank)) / 2**20
            if peft is not None:
                peft.clean()
                peft_mb = peak_tensor_bytes(peft) / 2**20
        if peft is not None:
            peft.clean()
        row = Row(
            n,
            case.label,
            case.peft or "-",
            min(ours_times),
            min(peft_times) if peft else None,
            ours_mb,
            peft_mb,
            ours_err,
            peft_err,
            result.relative_error,
        )
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'N':>3} {'method':<16} {'PEFT':<20} {'ours ms':>9} {'PEFT ms':>9} {'speedup':>8} "
    f"{'ours MiB':>9} {'PEFT MiB':>9} {'ours err':>9} {'PEFT err':>9} {'trunc':>7}"
)


def format_row(r: Row) -> str:
    return (
        f"{r.n:>3} {r.label:<16} {r.peft:<20} {r.ours_s * 1e3:>9.1f} {fmt(r.peft_s and r.peft_s * 1e3, '9.1f')} "
        f"{fmt(r.speedup, '7.1f') + ('x' if r.speedup else ''):>8} {fmt(r.ours_mb, '9.1f')} {fmt(r.peft_mb, '9.1f')} "
        f"{r.ours_err:>9.1e} {fmt(r.peft_err, '9.1e')} {r.reported:>7.3f}"
    )


def summary(rows: list[Row], ns: list[int]) -> str:
    svd8 = next((r for r in rows if r.label == "svd" and r.n == 8), None)
    svd_part = "svd@N=8 not run"
    if svd8 is not None and svd8.speedup is not None:
        ok = svd8.speedup >= 5 and svd8.ours_err <= 1e-4
        svd_part = f"exact svd @N=8: {svd8.speedup:.1f}x faster than PEFT svd, rel err {svd8.ours_err:.1e} ({'PASS' if ok else 'FAIL'} >=5x, <=1e-4)"
    svd32 = next((r for r in rows if r.label == "svd_r16" and r.n == 32), None)
    if svd32 is not None and svd32.speedup is not None:
        ok = svd32.speedup >= 10 and svd32.ours_err <= 1e-4
        svd_part += f"; svd_r16 @N=32: {svd32.speedup:.1f}x, rel err {svd32.ours_err:.1e} ({'PASS' if ok else 'FAIL'} >=10x, <=1e-4)"
    compared = [r for r in rows if r.speedup is not None]
    slowest = min(compared, key=lambda r: r.speedup, default=None)
    slow_part = "no PEFT comparisons"
    if slowest is not None:
        ok = slowest.speedup >= 1.0
        slow_part = f"slowest vs PEFT: {slowest.label}@N={slowest.n} {slowest.speedup:.1f}x ({'PASS' if ok else 'FAIL'} no method slower)"
    return f"SUMMARY N={ns} threads={torch.get_num_threads()}: {svd_part}; {slow_part}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2, 8, 32], help="numbers of hospitals")
    parser.add_argument("--methods", nargs="+", default=None, help="rows to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method; the minimum is reported")
    parser.add_argument(
        "--rank", type=int, default=16, help="target rank of the truncated merges (PEFT's default: max r)"
    )
    parser.add_argument("--density", type=float, default=None, help="override every method's density")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory profiling calls")
    parser.add_argument(
        "--spectrum",
        choices=["random", "gapped"],
        default="random",
        help="random: independent Gaussian adapters (flat spectrum); gapped: shared rank-16 directions + noise",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    available = cases(args.rank, args.density, args.seed)
    names = args.methods or list(available)
    unknown = [m for m in names if m not in available]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(available)}")
    print(
        f"ViT-B/16 LoRA: {LAYERS} layers x (query, value), {HIDDEN}x{HIDDEN}, r={RANK}, alpha={ALPHA}, {args.spectrum} spectrum; torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        "time: min over repeats; memory: peak live tensor bytes (torch profiler); err: max over modules vs float64 reference; trunc: error the project reports"
    )
    print(HEADER)
    rows = []
    for n in args.n:
        rows += bench(n, [available[m] for m in names], args)
    print(summary(rows, args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

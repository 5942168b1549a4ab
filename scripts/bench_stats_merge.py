"""Issue 28's side measurements on stored one-shot runs that kept their hospitals' merge statistics.

Per run: each hospital's statistics bytes (gram, fisher) against its adapter's; the merge time of
task arithmetic, TIES, RegMean and Fisher merging (median of --repeats, same adapters); and the
validation AUC (the hospitals' validation splits pooled per task, never test) of RegMean over a grid of
alpha, the only way this measurement chooses alpha. Writes <run>/stats_bench.json and prints it.

    .venv/bin/python scripts/bench_stats_merge.py results/issue28/real_multitask/seed0/one_shot ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_app.config import hospital_payload  # noqa: E402
from fl_app.hospital_steps import simulated_hospital  # noqa: E402
from fl_app.merge_stats import FISHER_SUFFIX, GRAM_SUFFIX, stats_bytes  # noqa: E402
from fl_app.remerge import load_stored_run  # noqa: E402
from fl_app.remerge.run import stats_screened  # noqa: E402
from fl_app.training import medmnist_metrics  # noqa: E402
from strategies.merging import hospital_weights, merge_hospital_adapters  # noqa: E402
from strategies.screening import max_share  # noqa: E402

METHODS = ["task_arithmetic", "ties", "regmean", "fisher"]


def merge_seconds(run, method: str, weights, repeats: int) -> float:
    hospitals, _ = stats_screened(run, method)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        merge_hospital_adapters(hospitals, weights, method=method)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def validation_auc(run, weights, alphas) -> dict[str, float]:
    """Validation AUC of RegMean at each alpha: every hospital's validation split pooled per task, tasks averaged."""
    experiment = json.loads(hospital_payload(run.experiment))
    n = int(run.experiment.simulation.num_hospitals)
    merged = {
        alpha: merge_hospital_adapters(run.hospitals, weights, method="regmean", params={"alpha": alpha})
        for alpha in alphas
    }
    pooled: dict[float, dict[str, tuple]] = {alpha: {} for alpha in alphas}  # alpha -> task -> (task, labels, scores)
    for hospital_id in run.evaluated_hospitals:
        hospital = simulated_hospital(experiment, hospital_id, n)
        for alpha, result in merged.items():
            name = hospital.model.use_adapter(experiment["lora"], rank=result.rank, alpha=result.lora_alpha)
            hospital.model.load_adapter_state(name, result.state, hospital.task)
            hospital.model.peft.to(hospital.device)
            scores = hospital._scores(hospital.data.val)
            task, labels, previous = pooled[alpha].get(hospital.task, (hospital.data.task, [], []))
            pooled[alpha][hospital.task] = (task, [*labels, hospital.data.val.labels], [*previous, scores])
    return {
        str(alpha): statistics.fmean(
            medmnist_metrics(task, np.concatenate(labels), np.concatenate(scores))["auc"]
            for task, labels, scores in tasks.values()
        )
        for alpha, tasks in pooled.items()
    }


def bench(folder: Path, repeats: int, alphas: list[float], validation: bool = True) -> dict:
    run = load_stored_run(folder)
    strategy = run.experiment.strategy
    weights = hospital_weights(
        [h.id for h in run.hospitals],
        [h.n_train for h in run.hospitals],
        str(strategy.weighting),
        strategy.get("weights"),
        max_share=max_share(strategy),
    )
    per_hospital = {
        str(h.id): {
            "adapter_bytes": sum(t.numel() * t.element_size() for t in h.state.values()),
            "gram_bytes": stats_bytes({k: t for k, t in h.stats.items() if k.endswith(GRAM_SUFFIX)}),
            "fisher_bytes": stats_bytes({k: t for k, t in h.stats.items() if k.endswith(FISHER_SUFFIX)}),
        }
        for h in run.hospitals
    }
    seconds = {method: merge_seconds(run, method, weights, repeats) for method in METHODS}
    report = {
        "run": str(folder),
        "bytes": per_hospital,
        "merge_seconds": seconds,
        "merge_time_vs_task_arithmetic": {m: s / seconds["task_arithmetic"] for m, s in seconds.items()},
        "regmean_validation_auc": validation_auc(run, weights, alphas) if validation else None,
        "threads": torch.get_num_threads(),
    }
    (folder / ("stats_bench.json" if validation else "stats_timing.json")).write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.6, 0.9, 1.0])
    parser.add_argument("--timing-only", action="store_true", help="bytes and merge times only (stats_timing.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for folder in args.runs:
        print(json.dumps(bench(folder, args.repeats, args.alphas, not args.timing_only), indent=2))


if __name__ == "__main__":
    main()

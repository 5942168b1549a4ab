"""Benchmark the Flower simulation (Ray backend) against the same work in one plain Python loop.

For each N (hospitals) and strategy, in the same invocation: the plain loop (`fl_app.bench.floor`:
the hospitals' own steps, merge and evaluation, no Flower, no Ray; in a fresh process of its own
session, like the run's SuperLink, after a warm-up), then the real experiment
through `run_simulation` (private SuperLink + `flwr run`), then the plain loop again; the floor
is the faster of the two loops (`--floor-repeats 1`: only the first). The Flower run is split into fixed start-up (launch, Ray, the
workers' imports, shutdown) and the rest; ratio = rest / floor. The in-run ratio compares, inside
the Flower run, the time its messages took with the hospitals' own time on them (`step-seconds`):
the same overhead, free of how two separate processes fare on a busy shared machine. Memory is the peak of the summed
PSS of every process of the run (Ray workers included), sampled each second; the loop's is this
loop process's own PSS. Bytes are the adapters and versions the run sent (results.json).

Fairness: a Ray worker with `--client-cpus C` runs torch with C threads (Ray sets
OMP_NUM_THREADS), so the plain loop runs with C threads too, and `--ray-cpus` (Ray's CPU count)
sets how many workers run at once. The default, C = 1 and Ray given 1 CPU, is one worker with one
thread against one loop with one thread: the same compute on both sides, so the ratio is pure
framework overhead. (One thread, not two: on a shared 2-core machine two-thread torch stalls on
its thread barrier whenever the other core is busy, by 5-10x, which would measure the neighbours.)
`--ray-cpus 0` lets Ray use every core (several workers against the one loop): reported, but then
the ratio mixes overhead with parallel speed-up. The GPU check uses 0.25 GPU per hospital.

    PYTHONPATH=. .venv/bin/python scripts/bench_sim.py --n 3 10                     # quick
    PYTHONPATH=. .venv/bin/python scripts/bench_sim.py --n 3 10 30 100 --strategies one_shot fedavg --rounds 3

Sweep mode (`--sweep K`): K jobs (seeds 0..K-1) of each N and strategy, three ways in one
invocation: K plain-loop floors (summed), K separate Flower runs, and one Flower simulation for
all K (`scripts/run.py -m`'s launcher, `fl_app.sweep`); it also checks that every sweep job scored
exactly what its separate run scored. `--quickstart` benchmarks the default experiment (real
MedMNIST tasks, EfficientNet-Lite0) with the caps given, instead of the synthetic tiny workload.

    PYTHONPATH=. .venv/bin/python scripts/bench_sim.py --sweep 8 --quickstart --n 3 --strategies one_shot --max-train 200 --max-eval 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402

from fl_app.bench.floor import FloorRun  # noqa: E402
from fl_app.bench.memory import PeakMemory  # noqa: E402
from fl_app.bench.report import (  # noqa: E402
    HEADER,
    SWEEP_HEADER,
    Row,
    SweepRow,
    format_row,
    format_sweep_row,
    inrun_ratio,
    phase_profile,
    split_startup,
    startup_parts,
    summary,
    sweep_summary,
)
from fl_app.config import compose_experiment, save_experiment  # noqa: E402
from fl_app.server.status import COMPLETED  # noqa: E402
from fl_app.simulation import prepare_run, run_simulation  # noqa: E402
from fl_app.sweep.runner import PreparedJob, run_sweep  # noqa: E402
from fl_app.training import pick_device  # noqa: E402
from strategies import STRATEGIES, strategy_spec  # noqa: E402

FLOOR_STRATEGIES = [name for name in STRATEGIES if strategy_spec(name).has_floor]  # what the plain loop can run


def workload(args, n: int, strategy: str, data_root: Path) -> list[str]:
    """Hydra overrides of one benchmark experiment: N hospitals of one task, small synthetic data
    (`--quickstart`: the default experiment on the real MedMNIST files, capped)."""
    if args.quickstart:
        return [
            f"data.root={args.data_root}",
            f"data.max_train={args.max_train}",
            f"data.max_eval={args.max_eval}",
            f"train.local_epochs={args.epochs}",
            f"strategy={strategy}",
            *([f"strategy.rounds={args.rounds}"] if strategy_spec(strategy).rounds else []),
            f"simulation.num_hospitals={n}",
            f"simulation.client_cpus={args.client_cpus}",
            f"simulation.ray_cpus={args.ray_cpus if args.ray_cpus else 'null'}",
            "quiet=true",
            *args.override,
        ]
    return [
        f"model={args.model}",
        "data=multi_center",
        f"data.flags=[{args.flag}]",
        "data.partition=iid",
        f"data.max_train={args.max_train}",
        f"data.max_eval={args.max_eval}",
        f"data.root={data_root}",
        f"train.local_epochs={args.epochs}",
        f"strategy={strategy}",
        *([f"strategy.rounds={args.rounds}"] if strategy_spec(strategy).rounds else []),
        f"simulation.num_hospitals={n}",
        f"simulation.client_cpus={args.client_cpus}",
        f"simulation.client_gpus={args.client_gpus}",
        f"simulation.ray_cpus={args.ray_cpus if args.ray_cpus else 'null'}",
        "quiet=true",
        *args.override,
    ]


def plain_loop(cfg, out_dir: Path) -> tuple[FloorRun, float]:
    """One plain-loop run in a fresh process of its own session (as the SuperLink's), after a warm-up."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = save_experiment(cfg, out_dir / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-m", "fl_app.bench.floor", str(config), str(out_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with PeakMemory(include_root=True, root=psutil.Process(child.pid)) as memory:
        stdout, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the plain loop failed (exit {child.returncode}) for {config}")
    return FloorRun(**json.loads(stdout.strip().splitlines()[-1])[0]), memory.peak_bytes / 2**20


def bench(args, n: int, strategy: str, work: Path) -> Row:
    cfg = compose_experiment(workload(args, n, strategy, work / "no-medmnist"))
    first, floor_mb = plain_loop(cfg, work / f"floor-{strategy}-{n}-a")
    run_dir = work / f"flower-{strategy}-{n}-{time.strftime('%H%M%S')}"  # a fresh folder even when --work is reused
    with PeakMemory(include_root=False) as memory:
        launched = time.time()
        run_simulation(cfg, run_dir, quiet=True)
        ended = time.time()
    second, floor_mb_2 = (
        plain_loop(cfg, work / f"floor-{strategy}-{n}-b") if args.floor_repeats > 1 else (first, floor_mb)
    )
    results = json.loads((run_dir / "results.json").read_text())
    startup, rest = split_startup(launched, ended, results)
    floor = min(first, second, key=lambda r: r.seconds)
    print(
        f"  [{strategy} N={n}] floor runs {first.seconds:.1f}/{second.seconds:.1f} s (train {floor.train_seconds:.1f}, evaluate {floor.evaluate_seconds:.1f}); "
        f"{floor.images_trained} images trained, {floor.images_evaluated} evaluated ({floor.versions} versions); "
        f"Flower wall {ended - launched:.1f} s; throughput floor {(floor.images_trained + floor.images_evaluated) / floor.seconds:.0f} img/s, "
        f"Flower (rest) {(floor.images_trained + floor.images_evaluated) / rest:.0f} img/s",
        flush=True,
    )
    print(
        f"  [{strategy} N={n}] start-up {startup:.1f} s ({startup_parts(launched, ended, results)}), rest {rest:.1f} s; {phase_profile(results)}",
        flush=True,
    )
    communication, evaluation = results["communication"], results.get("evaluation_traffic", {})
    return Row(
        strategy=strategy,
        n=n,
        rounds=int(communication["rounds"]),
        startup_s=startup,
        rest_s=rest,
        floor_s=floor.seconds,
        flower_peak_mb=memory.peak_bytes / 2**20,
        floor_peak_mb=max(floor_mb, floor_mb_2),
        upload_bytes=int(communication["upload_bytes"]) + int(evaluation.get("upload_bytes", 0)),
        download_bytes=int(communication["download_bytes"]) + int(evaluation.get("download_bytes", 0)),
        load=os.getloadavg()[0],
        inrun_ratio=inrun_ratio(results),
        evaluation_download_bytes=int(evaluation.get("download_bytes", 0)),
    )


def same_metrics(first: Path, second: Path) -> bool:
    """Whether two runs' versions scored the same on every task (their results.json)."""
    a, b = (json.loads((folder / "results.json").read_text())["versions"] for folder in (first, second))
    return [(v["name"], v["per_task"]) for v in a] == [(v["name"], v["per_task"]) for v in b]


def bench_sweep(args, n: int, strategy: str, work: Path) -> SweepRow:
    """K jobs (seeds 0..K-1): their plain-loop floors, K separate Flower runs, one Flower sweep."""
    stamp = time.strftime("%H%M%S")
    configs = [
        compose_experiment([*workload(args, n, strategy, work / "no-medmnist"), f"seed={seed}"])
        for seed in range(args.sweep)
    ]
    floors = [
        plain_loop(cfg, work / f"sweep-floor-{strategy}-{n}-{seed}")[0].seconds for seed, cfg in enumerate(configs)
    ]
    separate_dirs = [work / f"separate-{strategy}-{n}-{stamp}" / str(seed) for seed in range(args.sweep)]
    started = time.time()
    for cfg, folder in zip(configs, separate_dirs):
        run_simulation(cfg, folder, quiet=True)
    separate = time.time() - started
    sweep_dir = work / f"sweep-{strategy}-{n}-{stamp}"
    started = time.time()
    jobs = [PreparedJob(cfg, prepare_run(cfg, (sweep_dir / str(seed)).resolve())) for seed, cfg in enumerate(configs)]
    outcomes = run_sweep(jobs, sweep_dir.resolve(), quiet=True)
    swept = time.time() - started
    failed = [f"{o.results_dir.name}: {o.status} {o.error}" for o in outcomes if o.status != COMPLETED]
    if failed:
        raise RuntimeError(f"sweep jobs did not complete: {failed}")
    identical = sum(same_metrics(job.results_dir, folder) for job, folder in zip(jobs, separate_dirs))
    print(
        f"  [{strategy} N={n} K={args.sweep}] floors {' '.join(f'{f:.1f}' for f in floors)} s; "
        f"separate runs {separate:.1f} s; one sweep {swept:.1f} s",
        flush=True,
    )
    return SweepRow(strategy, n, args.sweep, sum(floors), separate, swept, identical, os.getloadavg()[0])


def print_table(header: str, lines: list[str], summary_line: str) -> None:
    print()
    print(header)
    print("\n".join(lines))
    print(summary_line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[3, 10, 30, 100], help="numbers of hospitals")
    parser.add_argument("--strategies", nargs="+", default=["one_shot", "fedavg"], choices=FLOOR_STRATEGIES)
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds")
    parser.add_argument("--model", default="tiny_vit", help="conf/model preset (vit_base_random: ViT-B/16 sized)")
    parser.add_argument("--flag", default="bloodmnist", help="the one task every hospital holds (synthetic stand-in)")
    parser.add_argument("--max-train", type=int, default=64, help="training images per hospital")
    parser.add_argument("--max-eval", type=int, default=16, help="test (and validation) images per hospital")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs")
    parser.add_argument(
        "--client-cpus", type=int, default=1, help="Ray CPUs per hospital = torch threads of a worker and of the loop"
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=1,
        help="CPUs Ray may use (0: all cores); 1 with --client-cpus 1 = one worker, as the one loop",
    )
    parser.add_argument(
        "--client-gpus", type=float, default=0.0, help="GPU fraction per hospital (0.25: four hospitals per GPU)"
    )
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=2,
        choices=[1, 2],
        help="plain loops per row (before and after the Flower run)",
    )
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--sweep", type=int, default=0, help="K > 0: the sweep mode, K jobs (seeds 0..K-1)")
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="the default experiment (real MedMNIST files) instead of tiny synthetic",
    )
    parser.add_argument(
        "--data-root", type=Path, default=REPO.parent / "shared" / "data" / "medmnist", help="with --quickstart"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--work", type=Path, default=None, help="folder for runs (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.client_cpus)
    os.environ["OMP_NUM_THREADS"] = str(args.client_cpus)  # the ServerApp's torch (merge) too, as Ray does for workers
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sim-"))
    print(
        f"bench_sim: {'the quickstart (real MedMNIST, ' + str(args.data_root) + ')' if args.quickstart else f'model={args.model}, {args.flag} synthetic'}, {args.max_train} train / {args.max_eval} test images per hospital, "
        f"{args.epochs} local epoch(s); client_cpus={args.client_cpus}, ray_cpus={args.ray_cpus or 'all'} (torch threads {torch.get_num_threads()} in the loop), "
        f"client_gpus={args.client_gpus}, loop device {pick_device()}; {os.cpu_count()} cores; torch {torch.__version__}; runs in {work}"
    )
    print(
        "start-up: launch + Ray + worker imports + shutdown; rest: the run less start-up; floor: plain loop (min of the runs before and after); "
        "ratio = rest/floor; in-run: Flower's message time over the hospitals' own time within the run; memory: peak summed PSS (Flower: all run processes incl. Ray; floor: this process); bytes: train + evaluate messages"
    )
    if args.sweep:
        sweep_rows = []
        for n in args.n:
            for strategy in args.strategies:
                sweep_rows.append(bench_sweep(args, n, strategy, work))
        print_table(SWEEP_HEADER, [format_sweep_row(row) for row in sweep_rows], sweep_summary(sweep_rows))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in sweep_rows], indent=2))
        return 0
    rows = []
    for n in args.n:
        for strategy in args.strategies:
            rows.append(bench(args, n, strategy, work))
            print(
                HEADER if len(rows) == 1 else "", format_row(rows[-1]), sep="\n" if len(rows) == 1 else "", flush=True
            )
    print_table(HEADER, [format_row(row) for row in rows], summary(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ratio": r.ratio, "total_s": r.total_s} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

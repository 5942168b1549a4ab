"""MedForge's cost against a one-shot run of the same preset and seed, in one invocation.

    .venv/bin/python scripts/bench_medforge.py --preset real_multitask --seed 0 --data-root ../shared/data/medmnist
    .venv/bin/python scripts/bench_medforge.py --medforge experiment=medforge_multitask_paper   # another MedForge setting

Runs the one-shot run, then the MedForge run (default: the best variant, `strategy=medforge_federated`),
and prints both wall times, the ratio (target <= 1.5) and where each run's time went.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from fl_app.bench.medforge_cost import cost_ratio, run_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="real_multitask")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument(
        "--medforge", nargs="*", default=["strategy=medforge_federated"], help="overrides of the MedForge run"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_medforge"))
    args = parser.parse_args(argv)
    common = [f"experiment={args.preset}", f"seed={args.seed}", f"data.root={args.data_root}", "quiet=true"]
    stamp = Path(args.out) / f"{args.preset}-s{args.seed}"
    one_shot = run_one("one-shot (task arithmetic)", [*common, "strategy=one_shot"], stamp / "one_shot")
    medforge = run_one("medforge " + " ".join(args.medforge), [*common, *args.medforge], stamp / "medforge")
    ratio = cost_ratio(one_shot, medforge)
    for row in (one_shot, medforge):
        phases = "; ".join(f"{k} {v:.1f} s" for k, v in row.profile.items() if v)
        print(
            f"{row.label}: wall {row.wall_seconds:.1f} s (launch to end {row.launch_seconds:.1f} s), "
            f"{(row.upload_bytes + row.download_bytes) / 1e6:.2f} MB, load {row.load:.2f}; {phases}"
        )
    print(
        f"MedForge / one-shot wall time: {ratio['wall_ratio']:.2f}x (launch to end {ratio['launch_ratio']:.2f}x), "
        f"bytes {ratio['bytes_ratio']:.2f}x"
    )
    (stamp / "bench.json").write_text(json.dumps({"rows": [asdict(one_shot), asdict(medforge)], **ratio}, indent=1))
    print(stamp / "bench.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

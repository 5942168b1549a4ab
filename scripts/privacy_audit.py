#!/usr/bin/env python
"""Leakage audit of what leaves a hospital: membership inference on released adapters, and how close
calibration sets come to real patients (with and without DP), as tables and a figure.

    python scripts/privacy_audit.py --membership results/privacy/real_multitask/seed0/eps*/one_shot \\
        --calibration results/privacy/real_multitask/seed0/eps-inf/one_shot --out results/privacy/audit

--membership: one_shot run folders; each hospital's adapter is attacked with the loss threshold
(members: its training split; non-members: its test split). --calibration: a run folder whose
config and hospitals are used to distil calibration sets three ways (MedForge's default noise
init, the same under DP distillation at --distill-epsilon, and the real-image init opt-in as a
positive control). The last line printed is the path of audit.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fl_app.calibration import DistillSettings  # noqa: E402
from fl_app.privacy.audit import nearest_indices  # noqa: E402
from fl_app.privacy.audit_run import CalibrationAudit, Variant, calibration_audit, membership_rows  # noqa: E402
from fl_app.privacy.settings import DistillPrivacy, NoiseTarget, PrivacySettings  # noqa: E402
from fl_app.server.results import write_json_atomic  # noqa: E402
from fl_app.training import unit_images  # noqa: E402


def variants(args) -> list[Variant]:
    settings = DistillSettings(ipc=args.ipc, iterations=args.iterations, lr=args.lr)
    private = PrivacySettings(
        enabled=True,
        target=NoiseTarget(epsilon=1.0),  # training target: unused here, only the distillation runs
        distill=DistillPrivacy(True, NoiseTarget(epsilon=args.distill_epsilon), 1.0, args.sample_rate),
    )
    return [
        Variant("noise init (MedForge default)", settings, None),
        Variant(f"noise init, DP ε={args.distill_epsilon:g}", settings, private),
        Variant(
            "real init (opt-in)",
            DistillSettings(ipc=args.ipc, iterations=args.iterations, lr=args.lr, init="real"),
            None,
        ),
    ]


def membership_table(rows: list[dict]) -> str:
    by_level: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        by_level.setdefault((row["task"], row["epsilon"]), []).append(row)
    lines = [
        "| task | ε | runs | loss: members / val / test | MIA AUC, non-members = val | MIA AUC, non-members = test |",
        "|---|---|---|---|---|---|",
    ]
    for (task, epsilon), group in sorted(by_level.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        eps = "∞" if math.isinf(epsilon) else f"{epsilon:.2f}"
        losses = " / ".join(f"{np.mean([r[k] for r in group]):.3f}" for k in ("member_loss", "val_loss", "test_loss"))
        lines.append(
            f"| {task} | {eps} | {len(group)} | {losses} | {_mean_std([r['mia_auc_val'] for r in group])} | "
            f"{_mean_std([r['mia_auc_test'] for r in group])} |"
        )
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def calibration_table(rows: list[dict]) -> str:
    lines = [
        "| task | calibration set | ε | images | pixels: median NN / test NN (ratio) | pixels: < p5 | embedding: ratio | embedding: < p5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "–" if math.isnan(r["epsilon"]) else f"{r['epsilon']:.2f}"
        lines.append(
            f"| {r['task']} | {r['variant']} | {eps} | {r['images']} | {r['pixels_released_median']:.2f} / "
            f"{r['pixels_test_median']:.2f} ({r['pixels_ratio']:.2f}) | {r['pixels_closer_than_p5']:.0%} | "
            f"{r['embedding_ratio']:.2f} | {r['embedding_closer_than_p5']:.0%} |"
        )
    return "\n".join(lines)


def neighbours_figure(audit: CalibrationAudit, path: Path, neighbours: int = 3) -> Path:
    """Per hospital and variant: one calibration image and its nearest real training images (pixels)."""
    keys = sorted(audit.examples)
    fig, axes = plt.subplots(len(keys), neighbours + 1, figsize=(1.7 * (neighbours + 1), 1.8 * len(keys)))
    for row, key in enumerate(keys):
        calibration, train_images = audit.examples[key]
        pick = int(np.argmax(calibration.labels[:, 0] == calibration.labels[-1, 0]))  # first image of the last class
        query = unit_images(calibration.images[pick : pick + 1])
        nearest = nearest_indices(query, unit_images(train_images), neighbours)[0]
        shown = [calibration.images[pick], *[train_images[i] for i in nearest]]
        for col, image in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{calibration.task}\n{key[1]}", fontsize=6)
        axes[row, 0].set_title("calibration image" if row == 0 else "", fontsize=7)
        for col in range(1, neighbours + 1):
            axes[row, col].set_title(f"nearest real #{col}" if row == 0 else "", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--membership", nargs="*", type=Path, default=[], help="one_shot run folders to attack")
    parser.add_argument("--calibration", type=Path, default=None, help="a run folder whose hospitals distil sets")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--distill-epsilon", type=float, default=2.0)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if not args.membership and args.calibration is None:
        parser.exit(2, "privacy_audit.py: error: give --membership run folders, --calibration a run folder, or both\n")
    args.out.mkdir(parents=True, exist_ok=True)
    sections, data = ["# Leakage audit"], {}
    if args.membership:
        rows = [row for folder in args.membership for row in membership_rows(folder)]
        data["membership"] = rows
        sections += [
            "## Membership inference on released adapters (loss threshold; 0.5 = no signal)",
            membership_table(rows),
        ]
    if args.calibration is not None:
        audit = calibration_audit(args.calibration, variants(args))
        data["calibration"] = audit.rows
        figure = neighbours_figure(audit, args.out / "nearest_neighbours.png")
        sections += [
            "## Calibration sets against the hospital's patients",
            "Ratio: the median distance of a calibration image to its nearest training image, over the "
            "median distance of a real test image to its nearest training image (1 = as far as a new patient). "
            "< p5: share of calibration images closer than 95% of test images are.",
            calibration_table(audit.rows),
            f"![nearest real neighbours]({figure.name})",
        ]
    write_json_atomic(args.out / "audit.json", data)
    report = args.out / "audit.md"
    report.write_text("\n\n".join(sections) + "\n")
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

"""The poisoning table (markdown) and plot (attack strength vs merged-model accuracy, one curve per defence)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fl_app.attack.attacks import DESCRIPTIONS  # noqa: E402
from fl_app.attack.defences import DEFENCES  # noqa: E402
from fl_app.attack.experiment import CaseOutcome  # noqa: E402


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def honest_reference(outcomes: Sequence[CaseOutcome], method: str, attackers: int) -> CaseOutcome | None:
    return next(
        (
            o
            for o in outcomes
            if o.case.defence == "honest-only" and o.case.method == method and o.case.attackers == attackers
        ),
        None,
    )


def markdown_table(outcomes: Sequence[CaseOutcome]) -> str:
    """One row per case: the merge's cosine and norm ratio to the honest-only merge, its test ACC/AUC and
    the ACC change against the honest-only merge of the same method, who was rejected."""
    lines = [
        "| method | defence | attack | factor | attackers | cosine | norm ratio | mean ACC | ΔACC (pts) | mean AUC | attackers' weight | rejected (honest) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        c = o.case
        ref = honest_reference(outcomes, c.method, c.attackers)
        delta = None if o.mean_acc is None or ref is None or ref.mean_acc is None else 100 * (o.mean_acc - ref.mean_acc)
        rejected = ", ".join(str(h) for h in sorted(o.rejected)) or "–"
        if o.honest_rejected:
            rejected += f" (honest: {', '.join(map(str, o.honest_rejected))})"
        if not o.merged:
            rejected += f"; {o.error}"
        lines.append(
            f"| {c.method} | {c.defence} | {c.attack or 'none'} | {c.factor:g} | {c.attackers} | {_fmt(o.cosine)} | "
            f"{_fmt(o.norm_ratio)} | {_fmt(o.mean_acc)} | {_fmt(delta, 1)} | {_fmt(o.mean_auc)} | "
            f"{_fmt(o.attacker_weight, 2)} | {rejected} |"
        )
    return "\n".join(lines)


def legend() -> str:
    attacks = "\n".join(f"- `{name}`: {text}" for name, text in DESCRIPTIONS.items())
    defences = "\n".join(f"- `{name}`: {spec[3]}" for name, spec in DEFENCES.items())
    return f"Attacks:\n{attacks}\n\nDefences:\n{defences}\n"


def plot_accuracy_vs_strength(outcomes: Sequence[CaseOutcome], method: str, attackers: int, path: Path) -> Path | None:
    """One panel per attack: factor (log x) vs mean test ACC, one curve per defence, the honest-only merge dashed."""
    attacked = [o for o in outcomes if o.case.method == method and o.case.attack and o.case.attackers == attackers]
    attacks = list(dict.fromkeys(o.case.attack for o in attacked))
    if not attacks:
        return None
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.6), sharey=True, squeeze=False)
    ref = honest_reference(outcomes, method, attackers)
    for ax, attack in zip(axes[0], attacks):
        for defence in dict.fromkeys(o.case.defence for o in attacked):
            points = sorted(
                (o.case.factor, o.mean_acc if o.mean_acc is not None else float("nan"))
                for o in attacked
                if o.case.attack == attack and o.case.defence == defence
            )
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=defence)
        if ref is not None and ref.mean_acc is not None:
            ax.axhline(ref.mean_acc, color="black", linestyle="--", linewidth=1, label="honest-only")
        ax.set_xscale("log")
        ax.set_title(attack)
        ax.set_xlabel("attack strength (x honest median norm)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("merged model: mean test ACC")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"{method}: {attackers} malicious hospital(s)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

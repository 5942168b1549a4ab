"""Imports flow one way (docs/architecture.md "Layers"): a module imports its own layer and the layers below.

The layer map, lowest first. A module belongs to the layer of the longest prefix that names it;
a new module that no prefix names fails `test_every_module_has_a_layer` until it is placed here.

    0  fl_app base      the hospital side and what both sides share: data, model (+ LoRA, mixture
                        math), training, calibration, protocol (wire format), pooled AUC,
                        adapter keys, failure records, hospital steps,
                        privacy (DP settings, accountant, DP-SGD, ledger, audit math)
    1  merging          strategies/merging: pure torch merge math (no flwr, no nevergrad, no Hydra)
    2  strategies       Flower strategies and MedForge's runner
    3  fl_app apps      ServerApp, ClientApp, config (Hydra composition, the hospitals' payload),
                        server orchestration, results, report, remerge, forge,
                        poisoning experiments (attack), the leakage audit (privacy.audit_run), benchmarks, experiment validation (it checks strategy settings), simulation, sweeps

The ClientApp sits in layer 3 but imports the hospital steps (layer 0) only when the first
message arrives; `test_client_app_first_import_*` below checks what it loads at import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fl_app", "strategies")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "fl_app base",
        (
            "fl_app",  # the package itself (an empty __init__)
            "fl_app.adapter_keys",
            "fl_app.app_pins",  # the app bundles a site accepts (its warm SuperExec checks them)
            "fl_app.calibration",
            "fl_app.candidate_scoring",  # MedForge's federated search at a hospital: wire format and scoring math
            "fl_app.data",
            "fl_app.failures",
            "fl_app.hospital_steps",
            "fl_app.merge_stats",  # what a hospital computes for RegMean and Fisher merging, and their wire keys
            "fl_app.model",
            "fl_app.pooled_auc",
            "fl_app.privacy",  # settings, accounting, DP-SGD, the ledger, the audit's math
            "fl_app.protocol",
            "fl_app.training",
        ),
    ),
    ("strategies/merging", ("strategies.merging",)),
    ("strategies", ("strategies",)),
    (
        "fl_app apps",
        (
            "fl_app.app_staging",  # the Flower app's files for `flwr run`
            "fl_app.attack",
            "fl_app.bench",
            "fl_app.client_app",
            "fl_app.config",  # composing the experiment and the hospitals' payload (asks the strategy's spec)
            "fl_app.diagnosis",  # MedForge's diagnosis on stored runs (in process, like remerge)
            "fl_app.forge",
            "fl_app.privacy.audit_run",  # the leakage audit on stored runs (reads them like remerge)
            "fl_app.remerge",
            "fl_app.report",
            "fl_app.server",
            "fl_app.server_app",
            "fl_app.simulation",
            "fl_app.sweep",  # a Hydra sweep as one simulation: the launcher, its runner, the ServerApp's job loop
            "fl_app.validation",
        ),
    ),
]


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix naming `module`; None for modules outside the project."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(path: Path, module: str) -> set[str]:
    """Modules a file imports anywhere (top level, inside functions, importlib.import_module literals)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def test_every_module_has_a_layer():
    unplaced = [name for name in project_modules() if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS (tests/test_layers.py): {unplaced}"


def test_no_import_goes_from_a_lower_layer_to_a_higher_one():
    # Prepare
    modules = project_modules()

    # Execute
    upward = []
    for name, path in modules.items():
        own = layer_of(name)
        for target in sorted(imported_modules(path, name)):
            if target.split(".")[0] not in PACKAGES:
                continue
            other = layer_of(target)
            if other is not None and other > own:
                upward.append(f"{name} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")

    # Assert
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom . import sibling\n\ndef f():\n    from strategies import one_shot\n"
        "    import importlib\n    importlib.import_module('fl_app.server')\n"
    )
    found = imported_modules(source, "fl_app.model.mod")
    assert {"os", "fl_app.model.sibling", "strategies.one_shot", "fl_app.server"} <= found
    assert layer_of("fl_app.model.lora") == 0 and layer_of("strategies.merging.lowrank") == 1
    assert layer_of("strategies.one_shot") == 2 and layer_of("fl_app.server.results") == 3


def loaded_after(statement: str) -> set[str]:
    """Top-level module names in sys.modules after `statement` runs in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    return set(completed.stdout.split())


@pytest.fixture(scope="module")
def after_merging_import() -> set[str]:
    return loaded_after("import strategies.merging")


def test_merging_imports_neither_flower_nor_nevergrad(after_merging_import):
    assert "flwr" not in after_merging_import and "nevergrad" not in after_merging_import
    assert not {m for m in after_merging_import if m.startswith("flwr.")}


def test_merging_import_loads_no_strategy_runner(after_merging_import):
    runners = {"strategies.one_shot", "strategies.fedavg", "strategies.medforge.runner", "strategies.medforge.search"}
    assert not runners & after_merging_import


def test_client_app_first_import_loads_no_strategy_and_no_nevergrad():
    # Flower loads the ClientApp module before Ray starts: it must stay light (fl_app/client_app.py)
    loaded = loaded_after("import fl_app.client_app")
    assert "nevergrad" not in loaded
    assert not {m for m in loaded if m == "strategies" or m.startswith("strategies.")}
    assert "fl_app.hospital_steps" not in loaded  # imported on the first message


def test_hospital_steps_import_no_strategy():
    # what a hospital process loads on its first message: the hospital side never imports a strategy
    loaded = loaded_after("import fl_app.hospital_steps")
    assert "nevergrad" not in loaded
    assert not {m for m in loaded if m == "strategies" or m.startswith("strategies.")}


def test_a_hospital_without_dp_loads_neither_sklearn_nor_medmnist_nor_opacus():
    # paid by every hospital process before its first step (docs/scale.md "Worker imports"): MedMNIST's
    # metrics are computed locally, the medmnist package is imported only to read a real MedMNIST file
    # (fl_app/data/medmnist_files.py), Opacus only under privacy=dp
    loaded = loaded_after(
        "import numpy as np, fl_app.hospital_steps\n"
        "from fl_app.data import task_info\nfrom fl_app.training import medmnist_metrics\n"
        "medmnist_metrics(task_info('breastmnist'), np.array([[0], [1]]), np.array([[0.6, 0.4], [0.3, 0.7]]))"
    )
    heavy = {"sklearn", "pandas", "medmnist", "medmnist.evaluator", "opacus", "scipy.stats"}
    assert not heavy & loaded

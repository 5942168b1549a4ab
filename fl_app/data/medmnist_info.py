"""MedMNIST's task table (`medmnist.info.INFO`) without importing the medmnist package.

`import medmnist` runs its __init__, which imports torch, scikit-learn and pandas (~2 s on a
busy 2-core machine); the table itself is one plain module of dicts. The server, the config
checks and `scripts/run.py` need only the table, so it is read from medmnist's own `info.py`
file; the package is imported where its dataset classes are used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_INFO_MODULE = "medmnist.info"


def _info_module():
    """medmnist's own `medmnist.info` module, loaded from its file when the package is not imported yet.

    It is registered under its real name, so a later `import medmnist` (whose __init__ does
    `from medmnist.info import INFO`) reuses it: there is one INFO dict in the process.
    """
    if _INFO_MODULE in sys.modules:
        return sys.modules[_INFO_MODULE]
    package = importlib.util.find_spec("medmnist")  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ImportError("medmnist is not installed: run scripts/install.sh")
    spec = importlib.util.spec_from_file_location(_INFO_MODULE, Path(package.submodule_search_locations[0]) / "info.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_INFO_MODULE] = module
    spec.loader.exec_module(module)
    return module


INFO: dict[str, dict[str, Any]] = _info_module().INFO

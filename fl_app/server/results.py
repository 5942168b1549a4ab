"""The results folder: results.json (written atomically after every step) and PEFT adapters."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fl_app.failures import Failure
from fl_app.privacy.summary import privacy_summary
from fl_app.protocol import HospitalReply
from fl_app.server.status import RUNNING
from strategies.outcome import ModelVersion

RESULTS_FILE = "results.json"


def finite(value: Any) -> Any:
    """NaN/inf become null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temp file + rename: a crash never leaves a half-written file."""
    data = finite(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=False, allow_nan=False)
    os.replace(tmp, path)


def version_entry(version: ModelVersion) -> dict[str, Any]:
    """A version's entry in results.json before evaluation: name, kind, adapter folder, LoRA shape, provenance.

    The one builder for a run and for a re-merge; `evaluation.evaluation_fields` adds the metrics.
    """
    entry = {
        "name": version.name,
        "kind": version.kind,
        "adapter": f"adapters/{version.name}",
        "r": version.r,
        "lora_alpha": version.alpha,
        **version.details,
    }
    if version.mixture is not None:
        entry["mixture"] = version.mixture
    return entry


class RunResults:
    """Accumulates the run's facts and rewrites results.json after each change.

    `hospital_of_node` is what the server knows of which node is which hospital (the coordinator's
    binding, then every node that named itself); failures of a node that did not name itself
    (a timeout, a lost SuperNode, a crashed worker) are filled in from it, now or once it is known.
    """

    def __init__(self, folder: Path, header: dict[str, Any], hospital_of_node: dict[int, int] | None = None) -> None:
        self.folder = folder
        self.started = time.time()
        self.hospitals: dict[int, HospitalReply] = {}
        self.hospital_of_node: dict[int, int] = dict(hospital_of_node or {})
        self.data: dict[str, Any] = {
            **header,
            "status": RUNNING,
            "hospitals": [],
            "versions": [],
            "failures": [],
            "communication": {},
            "wall_seconds": 0.0,
        }
        self.write()

    @property
    def path(self) -> Path:
        return self.folder / RESULTS_FILE

    def write(self) -> None:
        self.data["wall_seconds"] = round(time.time() - self.started, 3)
        write_results(self.folder, self.data)

    def record_round(self, server_round: int, hospitals: list[HospitalReply], failures: list[Failure]) -> None:
        """A training round arrived: keep who delivered (adapters saved at once) and who failed."""
        for hospital in hospitals:
            self.hospitals[hospital.hospital_id] = hospital
            self.hospital_of_node.setdefault(hospital.node_id, hospital.hospital_id)
        self.set_hospitals([h.summary() for _, h in sorted(self.hospitals.items())])
        self.record_failures(failures)
        self.data.setdefault("train_metrics", {})[str(server_round)] = {
            str(h.hospital_id): h.metrics for h in hospitals
        }
        privacy_config = (self.data.get("config") or {}).get("privacy")
        if (privacy_config or {}).get("enabled"):  # each hospital's DP accountant, re-checked (fl_app.privacy.summary)
            self.data["privacy"] = privacy_summary(self.data["train_metrics"], privacy_config)
        self.write()

    def set_hospitals(self, summaries: list[dict[str, Any]]) -> None:
        """The hospitals (`protocol.hospital_summary` dicts) and the data source they report together."""
        self.data["hospitals"] = summaries
        sources = {h["data_source"] for h in summaries}
        self.data["data_source"] = sources.pop() if len(sources) == 1 else ("mixed" if sources else None)

    def record_failures(self, failures: list[Failure]) -> None:
        """Hospitals left out of a step, as results.json lists them (named from their node when known)."""
        self.data["failures"].extend(f.named(self.hospital_of_node).as_dict() for f in failures)
        self.write()

    def learn_nodes(self, hospital_of_node: dict[int, int]) -> None:
        """Nodes that named their hospital later (e.g. in the evaluation): name their earlier failures too."""
        for node, hospital in hospital_of_node.items():
            self.hospital_of_node.setdefault(node, hospital)
        for failure in self.data["failures"]:
            if failure["hospital_id"] is None and failure["node_id"] in self.hospital_of_node:
                failure["hospital_id"] = self.hospital_of_node[failure["node_id"]]
        self.write()

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, error: str | None = None) -> None:
        """The run ended: `status` is one of fl_app.server.status (COMPLETED, INTERRUPTED, FAILED)."""
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.write()


def write_results(folder: Path, data: dict[str, Any], expected_text: str | None = None) -> Path:
    """Write a run folder's results.json (atomically): the one writer of the file.

    expected_text: the file as the caller read it; if it changed since, nothing is written (another
    remerge or forge wrote in between) and a RuntimeError says so."""
    path = Path(folder) / RESULTS_FILE
    if expected_text is not None and path.read_text() != expected_text:
        raise RuntimeError(
            f"{path} changed while this command ran (another remerge or forge?); nothing was written. Run it again."
        )
    write_json_atomic(path, data)
    return path


def read_results(folder: Path) -> dict[str, Any] | None:
    """results.json of a run folder, or None when there is none."""
    path = Path(folder) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None

"""Which node and which data each deployed hospital answered with in earlier runs, so a run says
when either changed: a new node behind the hospital id (a re-registered or another key), or new
data (the site changed its file, or another party holding the hospital's key answers with its own).

The record, `hospital-identities.json`, lives beside the run folders (the results folder's parent),
so runs written to one place compare with each other. Only hospitals that send a data fingerprint
(deployed sites; simulated ones get new node ids every run) are compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fl_app.server.results import write_json_atomic

IDENTITIES_FILE = "hospital-identities.json"
COMPARED = ("node_id", "data_fingerprint")


def identity_changes(
    before: dict[str, dict[str, Any]], hospitals: list[dict[str, Any]], run: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(what changed against `before`, the record updated with `hospitals` seen in `run`).

    hospitals: results.json `hospitals` entries; before: the record as last written (hospital id -> seen)."""
    changes, updated = [], dict(before)
    for hospital in hospitals:
        if hospital.get("data_fingerprint") is None or hospital.get("node_id") is None:
            continue
        key = str(hospital["id"])
        seen = {field: hospital[field] for field in COMPARED} | {"run": run}
        last = before.get(key)
        if last is not None and last.get("run") != run:
            changes += [
                {
                    "hospital_id": hospital["id"],
                    "changed": field,
                    "before": last.get(field),
                    "now": seen[field],
                    "last_seen_in": last.get("run"),
                }
                for field in COMPARED
                if last.get(field) is not None and last.get(field) != seen[field]
            ]
        updated[key] = seen
    return changes, updated


def describe(change: dict[str, Any]) -> str:
    """One change in words, for the coordinator's log."""
    what = "node" if change["changed"] == "node_id" else "data fingerprint"
    return (
        f"hospital {change['hospital_id']}: its {what} changed since {change['last_seen_in']} "
        f"({change['before']} -> {change['now']}): expected after a key rotation or new data; otherwise "
        "someone else may hold this hospital's key"
    )


class IdentityRecord:
    """The record beside a run's folder, read once when the run starts (what earlier runs saw)."""

    def __init__(self, results_folder: Path) -> None:
        self.path = Path(results_folder).parent / IDENTITIES_FILE
        self.run = Path(results_folder).name
        try:
            self.before: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path} is not JSON ({error}); move it away to start a new record") from None
        self.reported: set[tuple[int, str]] = set()

    def check(self, hospitals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Changes not reported yet in this run; the record then holds what this run saw."""
        changes, updated = identity_changes(self.before, hospitals, self.run)
        if any(h.get("data_fingerprint") is not None for h in hospitals):
            write_json_atomic(self.path, updated)
        fresh = [c for c in changes if (c["hospital_id"], c["changed"]) not in self.reported]
        self.reported |= {(c["hospital_id"], c["changed"]) for c in fresh}
        return fresh

"""A hospital's privacy ledger: every DP release made from its data, and its released training-set size.

At a deployed site the ledger lives on the site's own disk (node config `privacy-ledger`, default
`~/.medforge/privacy-ledger`), one file per dataset, keyed by the data's content fingerprint and
recording the data's path: a new job name, a new Flower run or a restart of the SuperNode finds the
same ledger, so K runs on the same patients compose into one ε. A release is written to it
(atomically: a temporary file, fsync, rename) *before* the mechanism runs, so a crash can only
over-count. Simulations keep one ledger per sweep job in Flower's per-node context state unless
`privacy.simulation.ledger` names a folder (then they behave like sites).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_app.privacy.accounting import Mechanism, epsilon_spent

LEDGER_KEY = "privacy-ledger"
DEFAULT_SITE_LEDGER = "~/.medforge/privacy-ledger"
FORMAT = 1


@dataclass
class Ledger:
    """Every mechanism run on one dataset (append with `history.append`, or `spend` to check and persist)."""

    history: list[Mechanism] = field(default_factory=list)
    count: int | None = None  # the training-set size as released once under DP (noised; accounted in history)
    path: Path | None = field(default=None, compare=False)  # the site's file; None: kept by the caller
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # what it is keyed by: path, fingerprint
    run_start: int = field(default=0, compare=False)  # entries before this came from earlier runs
    synced: int = field(default=0, compare=False, repr=False)  # entries already on disk

    def epsilon(self, delta: float) -> float:
        return epsilon_spent(self.history, delta)

    def to_json(self) -> str:
        """The history alone (a list), or with the released count ({"history", "count"})."""
        history = [list(m) for m in self.history]
        return json.dumps(history if self.count is None else {"history": history, "count": self.count})

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        value = json.loads(text)
        history, count = (value, None) if isinstance(value, list) else (value["history"], value.get("count"))
        return cls([(float(s), float(q), int(n)) for s, q, n in history], None if count is None else int(count))

    def spend(self, mechanism: Mechanism, check: Callable[[Sequence[Mechanism]], Any] | None = None) -> Any:
        """Check `mechanism` against everything spent so far (re-read from disk under a lock at a site),
        record it, and persist the ledger, all before the mechanism runs. Returns what `check` returns."""
        with self._locked():
            self._merge_disk()
            result = check(self.history) if check is not None else None
            self.history.append(tuple(mechanism))  # type: ignore[arg-type]
            self.save()
        return result

    def persist(self) -> None:
        """Write what was appended since the last sync (e.g. with `history.append`) onto the disk ledger,
        after whatever other processes recorded meanwhile."""
        with self._locked():
            self._merge_disk()
            self.save()

    def reload(self) -> None:
        """Take the on-disk state (another process on the same data may have spent meanwhile)."""
        if self.path is not None and self.path.exists():
            stored = _read(self.path)
            self.history, self.count = stored.history, stored.count
            self.synced = len(self.history)

    def _merge_disk(self) -> None:
        if self.path is None:
            return
        pending, count = self.history[self.synced :], self.count
        self.reload()
        self.history.extend(pending)
        self.count = self.count if self.count is not None else count

    def save(self) -> None:
        """Write the ledger atomically (no-op when the caller keeps it, e.g. in simulation)."""
        if self.path is None:
            return
        text = json.dumps(
            {"format": FORMAT, **self.data, "count": self.count, "history": [list(m) for m in self.history]}, indent=1
        )
        _atomic_write(self.path, text)
        self.synced = len(self.history)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> Ledger:
    stored = json.loads(path.read_text())
    return Ledger(
        [(float(s), float(q), int(n)) for s, q, n in stored["history"]],
        None if stored.get("count") is None else int(stored["count"]),
    )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_FINGERPRINTS: dict[tuple, str] = {}  # (path, sizes, mtimes) -> sha256: a message does not rehash unchanged data


def file_fingerprint(path: Path) -> str:
    """sha256 of a data file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    key = (str(path.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _hash_files(path, files)
    return _FINGERPRINTS[key]


def _hash_files(path: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def bytes_fingerprint(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def open_disk_ledger(folder: Path, where: str, fingerprint: str) -> Ledger:
    """The ledger of the data with `fingerprint` (found at `where`) in `folder`, created empty if new.

    A new fingerprint at a path that has a ledger (the file changed, e.g. patients were added) starts
    from that ledger's history: the same patients are likely still in it, so their spend carries over
    (the count is released afresh for the new data).
    """
    folder = Path(folder).expanduser()
    path = folder / f"{fingerprint[:32]}.json"
    ledger = Ledger(path=path, data={"data_path": where, "fingerprint": fingerprint})
    if path.exists():
        ledger.reload()
        return ledger
    for other in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            stored = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if stored.get("data_path") == where:
            ledger.history.extend((float(s), float(q), int(n)) for s, q, n in stored["history"])
    with ledger._locked():
        ledger.save()
    return ledger

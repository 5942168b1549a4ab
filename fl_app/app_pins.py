"""The app bundles a site accepts: the FAB hashes it reviewed and pinned in its own configuration.

Flower's `--trusted-entities` accepts only bundles signed through Flower's hub, so a site pins
hashes instead: its warm SuperExec (scripts/deploy/warm_superexec.py --pinned-apps FILE) checks
each ClientApp's bundle before it is installed or any of its code runs, and refuses any other
(docs/deployment.md "Pinning app releases"). A pin file holds one SHA-256 per line, optionally
followed by a note (release, reviewer, date); `#` starts a comment.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

#: Opens every refusal's text; the coordinator's failure records read it (fl_app.failures).
APP_NOT_PINNED = "app bundle not pinned at this site"
_HASH = re.compile(r"[0-9a-f]{64}")


class AppNotPinned(Exception):
    """A bundle whose hash the site has not pinned: refused before it runs."""


def fab_hash(content: bytes) -> str:
    """A bundle's hash as Flower computes it (flwr/cli/build.py: SHA-256 of the .fab bytes)."""
    return hashlib.sha256(content).hexdigest()


def read_pins(path: Path) -> dict[str, str]:
    """The pinned hashes of a pin file -> their notes; a ValueError naming the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pin file {path} not found; create it with scripts/deploy/pin_app.py (docs/deployment.md)")
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        digest, _, note = text.partition(" ")
        if not _HASH.fullmatch(digest.lower()):
            raise ValueError(
                f"{path}:{number}: {digest[:80]!r} is not a SHA-256 (64 hex digits); "
                "a line is `<sha256> [note]` as scripts/deploy/pin_app.py writes it"
            )
        pins[digest.lower()] = note.strip()
    return pins


def check_bundle(content: bytes, pins: dict[str, str], source: str, what: str = "") -> str:
    """The bundle's hash if pinned; else AppNotPinned naming the hash, `what` it claims to be, and the fix."""
    digest = fab_hash(content)
    if digest in pins:
        return digest
    raise AppNotPinned(
        f"{APP_NOT_PINNED}: sha256 {digest}{f' ({what})' if what else ''} is not in {source}; "
        "the site reviews that release and pins it (scripts/deploy/pin_app.py) before it may run"
    )

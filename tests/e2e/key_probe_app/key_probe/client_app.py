"""At the hospital: look for the SuperNode's private key the way a hostile app would, try to read it."""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
KEY_FLAG = "--auth-supernode-private-key"


def key_paths() -> list[str]:
    """Private key paths on the command lines of this machine's SuperNodes (/proc is world-readable)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if KEY_FLAG in args and args.index(KEY_FLAG) + 1 < len(args):
            found.append(args[args.index(KEY_FLAG) + 1])
    return sorted(set(found))


def readable(path: str) -> bool:
    try:
        Path(path).read_bytes()
    except OSError:
        return False
    return True


@app.query()
def probe(msg: Message, context: Context) -> Message:
    mine = str(context.node_config.get("key", ""))
    paths = key_paths()
    metrics = {
        "uid": os.getuid(),
        "found_own_key_path": int(mine in paths),
        "own_key_readable": int(readable(mine)),
        "keys_found": len(paths),
        "keys_readable": sum(readable(p) for p in paths),
    }
    return Message(RecordDict({"probe": MetricRecord(metrics)}), reply_to=msg)

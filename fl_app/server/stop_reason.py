"""Why a run stopped short, in the words results.json keeps: a SuperLink that went away (a restart,
a shutdown) is named, so the run that was under way says why it ended (no imports beyond os/time)."""

from __future__ import annotations

import os
import time

#: How long a signalled ServerApp, its results already written, waits to see whether its SuperLink is
#: exiting too (a SuperLink stopped with its process group signals both at once). Well under Flower's
#: force exit, 5 s after the signal (flwr/supercore/exit/exit.py).
PARENT_GRACE_S = 3.0


class SuperLinkWatch:
    """The process that started this ServerApp: the SuperLink's own SuperExec (`--isolation
    subprocess`), which stops with the SuperLink, or the simulation's. A ServerApp whose parent
    exited has been re-parented: its SuperLink is gone."""

    def __init__(self) -> None:
        self.superlink_pid = os.getppid()

    def gone(self, grace_s: float = 0.0) -> bool:
        """Whether the SuperLink exited (waiting up to `grace_s` seconds for it to)."""
        deadline = time.monotonic() + grace_s
        while os.getppid() == self.superlink_pid:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def interrupted(self, stage: str | None, grace_s: float = 0.0) -> str:
        """results.json's `error` for a run a signal ended during `stage` (waiting up to `grace_s` for
        the SuperLink to exit)."""
        if self.gone(grace_s):
            return (
                f"the SuperLink stopped during {stage} (restarted or shut down), which ends the run under way; "
                "hospitals reconnect on their own once it is back"
            )
        return f"stopped during {stage} (a signal: `flwr stop`, Ctrl-C, or the host stopping the SuperLink's processes)"

    def failed(self, error: BaseException, stage: str | None) -> str:
        """results.json's `error` for an exception during `stage` (named as the SuperLink's loss when it was)."""
        cause = f"{type(error).__name__}: {error} (during {stage})"
        return f"the SuperLink stopped during {stage}; {cause}" if self.gone() else cause

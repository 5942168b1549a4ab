"""A run's `status` in results.json: the one vocabulary every writer and reader of it uses (no imports)."""

from __future__ import annotations

RUNNING = "running"  # the ServerApp is at it (`stage` says where)
COMPLETED = "completed"  # every version evaluated and written
INTERRUPTED = "interrupted"  # a signal or `flwr stop` ended it (`interrupted` says when and at which stage)
FAILED = "failed"  # an error ended it (`error` says which)

STATUSES = (RUNNING, COMPLETED, INTERRUPTED, FAILED)
FINISHED = (COMPLETED, FAILED)  # the ServerApp is done with it: a later signal does not change it
STOPPED_SHORT = (INTERRUPTED, FAILED)  # ended before completing: what it has is the adapters it received

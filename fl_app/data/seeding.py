"""Seeds derived from a run seed and names, identical in every process (unlike Python's hash())."""

from __future__ import annotations

import zlib

import numpy as np


def stable_tag(*parts: object) -> int:
    """32-bit tag of strings and ints, stable across processes and Python versions."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def derive_seed(seed: int, *tags: object) -> int:
    """An independent 32-bit seed for (seed, tags), e.g. (run seed, 'pathmnist', 'partition')."""
    return int(np.random.SeedSequence([int(seed) % 2**63, stable_tag(*tags)]).generate_state(1)[0])

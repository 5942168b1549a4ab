"""Who speaks for a task: near-identical adapters count as one party, and a direction vote needs a majority.

Pure helpers of the screen (`strategies.merging.validation`). Independently trained adapters are never
(near-)identical: different patients, different noise. Identical ones from distinct hospitals mean one
party behind several nodes, so they get one vote in the direction median and one hospital's share of
the merge weight; a vote that would evict half or more of the parties is a tie, and a tie evicts no one.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def duplicate_parties(vectors: Mapping[int, Tensor], tolerance: float) -> list[list[int]]:
    """Groups (of two or more keys) whose vectors are within `tolerance` x the larger norm of each other.

    Single-linkage over pairs, so a chain of near-copies is one party; keys keep their given order.
    """
    keys = list(vectors)
    parent = {k: k for k in keys}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    norms = {k: float(v.norm()) for k, v in vectors.items()}
    for a, i in enumerate(keys):
        for j in keys[a + 1 :]:
            if vectors[i].shape != vectors[j].shape:
                continue
            scale = max(norms[i], norms[j])
            if float((vectors[i] - vectors[j]).norm()) <= tolerance * scale:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for k in keys:
        groups.setdefault(root(k), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def party_of(keys: Sequence[int], parties: Sequence[Sequence[int]]) -> dict[int, int]:
    """Each key's party representative (itself when it belongs to no party)."""
    found = {k: k for k in keys}
    for party in parties:
        for k in party:
            if k in found:
                found[k] = party[0]
    return found


def median_direction_cosines(units: Mapping[int, Tensor], voters: Sequence[int]) -> dict[int, float]:
    """Cosine of every unit vector to the coordinate-wise median of the voters' unit vectors."""
    median = torch.stack([units[k] for k in voters]).median(dim=0).values
    return {k: float(torch.nn.functional.cosine_similarity(u, median, dim=0)) for k, u in units.items()}


def direction_outliers(
    cosines: Mapping[int, float],
    voters: Sequence[int],
    min_cosine: float | None,
    min_relative_cosine: float | None,
) -> dict[int, str]:
    """The keys whose cosine breaks a limit, each with the limit's wording.

    The typical cosine is the median over the voters (one per party), so copies cannot set it.
    """
    typical = statistics.median(cosines[k] for k in voters)
    found = {}
    for k, cosine in cosines.items():
        if min_cosine is not None and cosine <= min_cosine:
            found[k] = f"strategy.screen.min_cosine={min_cosine:g}"
        elif min_relative_cosine is not None and cosine < min_relative_cosine * typical:
            found[k] = (
                f"strategy.screen.min_relative_cosine={min_relative_cosine:g} x the task's median cosine {typical:.3f}"
            )
    return found


def is_tie(flagged: Sequence[int], voters: Sequence[int], party: Mapping[int, int]) -> bool:
    """True when the flagged keys make up half or more of the voting parties: no majority to evict them."""
    flagged_parties = {party[k] for k in flagged}
    return 2 * len(flagged_parties) >= len(voters)


def weight_shares(ids: Sequence[int], parties: Sequence[Sequence[int]]) -> list[float]:
    """Each id's share of one hospital's weight: 1 / (size of its party among `ids`), 1 alone."""
    present = set(ids)
    size = {}
    for party in parties:
        members = [k for k in party if k in present]
        for k in members:
            size[k] = len(members)
    return [1.0 / size.get(k, 1) for k in ids]

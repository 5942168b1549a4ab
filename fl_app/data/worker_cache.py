"""Hospital data kept per worker process, bounded: one Ray worker serves many hospitals in turn.

A simulated hospital's data is loaded on its first message and kept for the next ones (FedAvg
rounds, the evaluation after training); the least recently used hospital is forgotten once more
than `capacity` are held, so a worker's memory follows the bound, not the number of hospitals.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

from fl_app.data.hospital import HospitalData, load_hospital

T = TypeVar("T")

#: Hospitals whose data a worker keeps when the experiment does not say (simulation.data_cache_size).
DEFAULT_DATA_CACHE = 8


class BoundedCache(Generic[T]):
    """Least-recently-used values by key; `capacity` is given per lookup (0 keeps nothing)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, load: Callable[[], T], capacity: int) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            value = self._entries[key]
        else:
            value = load()
            self._entries[key] = value
        while len(self._entries) > max(capacity, 0):
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


_HOSPITALS: BoundedCache[HospitalData] = BoundedCache()


def cached_hospital_data(data_cfg: Mapping[str, Any], hospital_id: int, num_hospitals: int, seed: int, capacity: int) -> HospitalData:
    """`load_hospital`, served from this process's bounded cache when the same hospital came before."""
    key = (json.dumps(dict(data_cfg), sort_keys=True, default=str), hospital_id, num_hospitals, seed)
    return _HOSPITALS.get(key, lambda: load_hospital(data_cfg, hospital_id, num_hospitals, seed), capacity)


def clear_hospital_cache() -> None:
    """Forget cached hospitals (tests; or after new files were put under the data root)."""
    _HOSPITALS.clear()

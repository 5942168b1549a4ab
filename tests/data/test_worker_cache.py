"""A worker keeps the data of its most recent hospitals, never more than the bound."""

from __future__ import annotations

import fl_app.data.worker_cache as worker_cache
from fl_app.data.worker_cache import BoundedCache, cached_hospital_data, clear_hospital_cache


def test_the_least_recently_used_entry_goes_first():
    cache, loads = BoundedCache(), []
    load = lambda key: (lambda: loads.append(key) or key)  # noqa: E731

    for key in ("a", "b", "a", "c"):  # "a" used again before "c" arrives: "b" is the oldest
        cache.get(key, load(key), capacity=2)
    cache.get("a", load("a"), capacity=2)
    cache.get("b", load("b"), capacity=2)

    assert loads == ["a", "b", "c", "b"]
    assert len(cache) == 2


def test_capacity_zero_keeps_nothing_and_a_smaller_bound_evicts_at_once():
    cache = BoundedCache()
    for key in range(4):
        cache.get(key, lambda key=key: key, capacity=4)

    cache.get(9, lambda: 9, capacity=1)
    assert len(cache) == 1
    cache.get(8, lambda: 8, capacity=0)
    assert len(cache) == 0


def test_a_hospital_is_loaded_once_while_it_stays_in_the_bound(data_cfg, monkeypatch):
    clear_hospital_cache()
    loads = []
    real = worker_cache.load_hospital
    monkeypatch.setattr(worker_cache, "load_hospital", lambda *a: loads.append(a[1]) or real(*a))
    cfg = data_cfg(max_train=16, max_eval=8)

    first = cached_hospital_data(cfg, 0, 3, 0, capacity=2)
    again = cached_hospital_data(cfg, 0, 3, 0, capacity=2)
    for hospital in (1, 2, 0):  # 0 fell out when 1 and 2 came
        cached_hospital_data(cfg, hospital, 3, 0, capacity=2)

    assert again is first
    assert loads == [0, 1, 2, 0]
    clear_hospital_cache()

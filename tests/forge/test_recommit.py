"""Recommit (fl_app/forge/recommit.py): equal to merging with the new adapter in place of the old, for every method."""

from __future__ import annotations

import pytest

from fl_app.adapter_layout import AdapterLayout
from fl_app.forge.recommit import read_adapter, recommitted_versions, screen_arrival
from fl_app.forge.withdraw import withdrawn_version
from fl_app.remerge.stored import StoredHospital
from fl_app.server.results import version_entry
from strategies.merging import MERGE_METHODS
from strategies.merging.registry import task_arithmetic
from tests.forge.conftest import assert_same_version, hospital_state, hospital_stats, make_run, run_merge, save_state

LINEAR = {name for name, m in MERGE_METHODS.items() if m.fn is task_arithmetic}


def _with(hospitals, replacement):
    return [replacement if h.id == replacement.id else h for h in hospitals]


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
def test_recommit_equals_the_merge_with_the_new_adapter(tmp_path, hospitals, method):
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, method)])
    new_state = hospital_state(7, "a", 2)

    new_stats = hospital_stats(new_state, 7)  # a data-aware version needs the new adapter's statistics too
    own, version = recommitted_versions(run, "merged", 1, new_state, 2, 4.0, n_train=80, stats=new_stats)

    replacement = StoredHospital(1, "a", 80, new_state, 2, 4.0, new_stats)
    assert_same_version(version, run_merge(_with(hospitals, replacement), method))
    assert version.details["recommitted"] == [1] and version.details["sources"] == {"1": "hospital-1.2"}
    assert version.details["forge"]["path"] == ("factored" if method in LINEAR else "recomputed")
    assert own.name == "hospital-1.2" and own.kind == "commit" and own.details["n_train"] == 80


def test_a_new_adapter_of_another_rank_recommits_exactly_and_later_withdraws_use_it(tmp_path, hospitals):
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, "task_arithmetic")])
    new_state = hospital_state(8, "b", 3)
    replacement = StoredHospital(2, "b", 20, new_state, 3, 3.0)

    own, version = recommitted_versions(run, "merged", 2, new_state, 3, 3.0)
    for v in (own, version):  # committed as the command would, without evaluation
        save_state(tmp_path, v.name, v.state)
        run.results["versions"].append(version_entry(v))
    later = withdrawn_version(run, version.name, 0)

    current = _with(hospitals, replacement)
    assert_same_version(version, run_merge(current, "task_arithmetic"))
    assert_same_version(later, run_merge(current, "task_arithmetic", ids=[1, 2, 3]))
    assert later.details["sources"] == {"2": "hospital-2.2"}


def test_a_bad_new_adapter_is_refused_by_screening(tmp_path, hospitals):
    run = make_run(tmp_path, hospitals, [run_merge(hospitals, "task_arithmetic")])
    bad = hospital_state(9, "a", 2)
    bad["m.linear.lora_B.weight"][0, 0] = float("nan")
    lora = {k: v for k, v in hospitals[0].state.items() if ".lora_" in k}
    heads = {t: {k: v for k, v in h.state.items() if f".heads.{t}." in k} for h in hospitals for t in [h.task]}
    layout = AdapterLayout.from_states(lora, heads, {m: 1e6 for m in ("m.linear", "m.pw", "m.conv")})
    others = [h for h in hospitals if h.id != 3]

    with pytest.raises(ValueError, match="hospital 3's new adapter fails screening"):
        screen_arrival(run, others, StoredHospital(3, "a", 40, bad, 2, 4.0), layout)


def test_read_adapter_needs_a_peft_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a PEFT adapter"):
        read_adapter(tmp_path, "a")

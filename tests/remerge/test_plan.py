"""What to re-merge (fl_app/remerge/plan.py): methods read at call time, parameters, weights, names, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fl_app.remerge import parse_params, parse_weights, plan_requests, registered_methods
from strategies.merging import MERGE_METHODS

RUN_STRATEGY = {
    "name": "one_shot",
    "merge": "task_arithmetic",
    "weighting": "num_examples",
    "scale": 1.0,
    "merge_rank": None,
}


def test_params_are_yaml_scalars_optionally_scoped_to_a_method():
    assert parse_params(["density=0.5", "ties.normalize=weights", "seed=3", "flag=true"]) == [
        (None, "density", 0.5),
        ("ties", "normalize", "weights"),
        (None, "seed", 3),
        (None, "flag", True),
    ]
    with pytest.raises(ValueError, match="is not key=value"):
        parse_params(["density"])


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown merge method 'nope'; choose one of \[.*'task_arithmetic'"):
        plan_requests(["nope"], [], RUN_STRATEGY)


def test_a_method_registered_later_is_usable_without_extra_wiring(monkeypatch):
    monkeypatch.setitem(
        MERGE_METHODS,
        "my_merge",
        replace(MERGE_METHODS["task_arithmetic"], name="my_merge", description="added by a test"),
    )

    (request,) = plan_requests(["my_merge"], [], RUN_STRATEGY)

    assert request.name == "remerge-my_merge" and request.label == "my_merge"
    assert "my_merge" in registered_methods() and "added by a test" in registered_methods()


def test_unscoped_params_go_to_the_methods_that_declare_them():
    # a registered method that disappears fails here (plan_requests raises), it is not skipped
    requests = {
        r.method: r for r in plan_requests(["task_arithmetic", "ties"], parse_params(["density=0.5"]), RUN_STRATEGY)
    }

    assert requests["ties"].params == {"density": 0.5} and requests["task_arithmetic"].params == {}
    assert requests["ties"].name == "remerge-ties-density=0.5" and requests["ties"].label == "ties (density=0.5)"


def test_a_param_no_selected_method_declares_is_refused():
    with pytest.raises(ValueError, match=r"no selected method declares 'not_a_param'"):
        plan_requests(["task_arithmetic"], parse_params(["not_a_param=1"]), RUN_STRATEGY)


def test_settings_that_differ_from_the_run_name_and_label_the_version():
    (request,) = plan_requests(["task_arithmetic"], [], RUN_STRATEGY, weighting="uniform", rank=4)

    assert (request.weighting, request.rank, request.scale) == ("uniform", 4, 1.0)
    assert request.name == "remerge-task_arithmetic-weighting=uniform-merge_rank=4"
    assert request.label == "task_arithmetic (weighting=uniform, merge_rank=4)"
    (same,) = plan_requests(["task_arithmetic"], [], RUN_STRATEGY, weighting="num_examples")
    assert same.name == "remerge-task_arithmetic" and same.label == "task_arithmetic"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weighting": "by_size"}, r"--weighting='by_size' is not valid"),
        ({"rank": 0}, r"--merge-rank=0 must be a positive integer"),
        ({"name": "../escape"}, r"--name='../escape' is not a valid version name"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_requests(["task_arithmetic"], [], RUN_STRATEGY, **kwargs)


def test_explicit_weighting_takes_the_runs_weights_or_those_given():
    run = {**RUN_STRATEGY, "weighting": "explicit", "weights": {0: 0.7, 1: 0.3}}

    (from_run,) = plan_requests(["task_arithmetic"], [], run)
    (given,) = plan_requests(
        ["task_arithmetic"], [], RUN_STRATEGY, weighting="explicit", weights=parse_weights(["0=2", "1=-1"])
    )

    assert from_run.weighting == "explicit" and from_run.weights == {"0": 0.7, "1": 0.3}
    assert given.weights == {"0": 2.0, "1": -1.0} and "weighting=explicit" in given.name
    with pytest.raises(ValueError, match=r"--weighting explicit needs a weight per hospital"):
        plan_requests(["task_arithmetic"], [], RUN_STRATEGY, weighting="explicit")
    with pytest.raises(ValueError, match=r"--weight 'x=1' is not ID=W"):
        parse_weights(["x=1"])

"""Train once, merge many: re-merge the hospital adapters stored in a finished run with other
registered merge methods, evaluate the new versions in-process on every hospital's test split
(no retraining, no Flower), and add them to the run beside the original versions.
"""

from fl_app.remerge.plan import MergeRequest, parse_params, parse_weights, plan_requests, registered_methods
from fl_app.remerge.run import remerge
from fl_app.remerge.stored import StoredHospital, StoredRun, load_stored_run

__all__ = [
    "MergeRequest",
    "StoredHospital",
    "StoredRun",
    "load_stored_run",
    "parse_params",
    "parse_weights",
    "plan_requests",
    "registered_methods",
    "remerge",
]

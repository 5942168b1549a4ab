"""Comparison reports over finished runs: collect results folders, tabulate, plot, write report.md.

Reads only what runs wrote (results.json); never modifies a results folder except by adding the
report files where it is asked to write them.
"""

from fl_app.report.collect import Run, find_result_folders, load_runs
from fl_app.report.curves import Curve, CurvePoint, fedavg_curves, one_shot_points, progressive_curves
from fl_app.report.table import Column, Comparison, Entry, Row, Stat, compare_runs, cumulative_bytes
from fl_app.report.write import write_report

__all__ = [
    "Column",
    "Comparison",
    "Curve",
    "CurvePoint",
    "Entry",
    "Row",
    "Run",
    "Stat",
    "compare_runs",
    "cumulative_bytes",
    "fedavg_curves",
    "find_result_folders",
    "load_runs",
    "one_shot_points",
    "progressive_curves",
    "write_report",
]

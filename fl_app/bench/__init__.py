"""Benchmark pieces for `scripts/bench_sim.py`: the plain-loop floor, memory sampling, the table.

Not used by experiments; kept in the package so the script stays thin and the math is testable.
"""

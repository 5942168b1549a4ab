"""Poisoning experiments on real adapters: malicious hospitals (attacks.py), defences as strategy
settings (defences.py), the merge-and-evaluate harness (experiment.py), table and plot (report.py)."""

"""Measurements behind docs/medforge.md: what MedForge's calibration sets and searches see, on a stored run."""

"""Hydra finds launchers only in the `hydra_plugins` namespace: this names MedForge's
(fl_app/sweep/launcher.py), selected by conf/hydra/launcher/medforge.yaml."""

from fl_app.sweep import launcher as _sweep


class MedForgeLauncher(_sweep.SweepLauncher):
    """`hydra/launcher=medforge`, the default: a sweep runs as one Flower simulation per federation shape."""

"""A site runs only the app bundles it pinned (start_supernode.sh --pinned-apps): on loopback, the
hospital that pinned the coordinator's release trains; the one whose pins name another release
refuses the bundle before it runs, logs it, and the coordinator records the refusal."""

from __future__ import annotations

import sys

import pytest

from fl_app.app_pins import APP_NOT_PINNED, fab_hash
from fl_app.data.demo_sites import write_demo_npz
from fl_app.failures import APP_REFUSED
from fl_app.server.results import read_results
from fl_app.server.status import COMPLETED
from tests.conftest import REPO, TINY_SITE
from tests.e2e.federation import DEPLOY, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_a_site_refuses_an_app_bundle_it_has_not_pinned(tmp_path):
    # Prepare: hospital 0 pins the release it reviewed (this checkout); hospital 1 pins another release
    fed = LoopbackFederation(tmp_path)
    try:
        fed.make_keys(["hospital-0", "hospital-1"])
        fed.start_superlink()
        reviewed, other = tmp_path / "pins-hospital-0.txt", tmp_path / "pins-hospital-1.txt"
        pinned = fed.run(sys.executable, DEPLOY / "pin_app.py", "--pins", reviewed, "--app", REPO, "--note", "test")
        assert pinned.returncode == 0, pinned.stderr
        release = pinned.stdout.split()[1]
        other.write_text(f"{fab_hash(b'an older release')} medforge 0.0.9\n")
        for hospital_id, (flag, pins) in enumerate([("breastmnist", reviewed), ("pneumoniamnist", other)]):
            write_demo_npz(tmp_path / f"{flag}.npz", flag, n_train=48, n_eval=24)
            fed.register(f"hospital-{hospital_id}")
            config = f'hospital-id={hospital_id} task="{flag}" data-path="{tmp_path / f"{flag}.npz"}"'
            fed.start_supernode(f"hospital-{hospital_id}", config, pinned_apps=pins)
        fed.wait_online(2, timeout=180)
        overrides = " ".join([*TINY_SITE, "train.local_epochs=1", "strategy.min_hospitals=1"])

        # Execute
        done = fed.flwr_run(f"data='site' strategy='one_shot' results-dir='{tmp_path / 'run'}' overrides='{overrides}'")

        # Assert
        results = read_results(tmp_path / "run")
        assert results is not None and results["status"] == COMPLETED, done.stdout[-3000:]
        assert [h["id"] for h in results["hospitals"]] == [0]
        refusals = [f for f in results["failures"] if f["hospital_id"] == 1]
        assert refusals and all(f["reason"] == APP_REFUSED for f in refusals), results["failures"]
        error = refusals[0]["error"]
        assert APP_NOT_PINNED in error and release in error and str(other) in error, error
        site_log = fed.log("supernode-hospital-1.log")
        assert "warm_superexec: refused to run it" in site_log and release in site_log
        assert "refused" not in fed.log("supernode-hospital-0.log")
    finally:
        fed.close()

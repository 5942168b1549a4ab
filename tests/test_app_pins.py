"""fl_app/app_pins.py: a site runs only the app bundles whose hashes it pinned."""

from __future__ import annotations

import hashlib

import pytest

from fl_app.app_pins import APP_NOT_PINNED, AppNotPinned, check_bundle, fab_hash, read_pins
from fl_app.failures import APP_REFUSED, failure_cause

REVIEWED = b"the reviewed release's bundle"
OTHER = b"a bundle nobody at the site reviewed"


def test_a_pinned_bundle_passes_and_any_other_is_refused_naming_its_hash(tmp_path):
    pins_file = tmp_path / "pins.txt"
    pins_file.write_text(f"# site pins\n{fab_hash(REVIEWED)} medforge 1.2, reviewed by J. Doe\n\n")
    pins = read_pins(pins_file)

    accepted = check_bundle(REVIEWED, pins, str(pins_file))
    with pytest.raises(AppNotPinned) as refused:
        check_bundle(OTHER, pins, str(pins_file), "medforge 1.3")

    assert accepted == hashlib.sha256(REVIEWED).hexdigest()
    assert pins == {accepted: "medforge 1.2, reviewed by J. Doe"}
    text = str(refused.value)
    assert text.startswith(APP_NOT_PINNED) and fab_hash(OTHER) in text and "medforge 1.3" in text
    assert str(pins_file) in text and "pin_app.py" in text


def test_an_empty_pin_file_refuses_everything(tmp_path):
    (tmp_path / "pins.txt").write_text("# nothing reviewed yet\n")

    with pytest.raises(AppNotPinned):
        check_bundle(REVIEWED, read_pins(tmp_path / "pins.txt"), "pins.txt")


def test_a_malformed_or_missing_pin_file_is_an_error_naming_the_line_and_the_fix(tmp_path):
    (tmp_path / "pins.txt").write_text(f"{fab_hash(REVIEWED)}\nmedforge-latest\n")

    with pytest.raises(ValueError, match=r"pins.txt:2: 'medforge-latest' is not a SHA-256"):
        read_pins(tmp_path / "pins.txt")
    with pytest.raises(ValueError, match="not found; create it with scripts/deploy/pin_app.py"):
        read_pins(tmp_path / "missing.txt")


def test_the_coordinator_records_a_refusal_as_app_refused():
    reason = f"<class 'fl_app.app_pins.AppNotPinned'>:<'{APP_NOT_PINNED}: sha256 ab (hospital-id=1)'>"

    assert failure_cause(0, reason) == APP_REFUSED
    assert failure_cause(0, "<class 'ValueError'>:<'bad data'>") == "error"

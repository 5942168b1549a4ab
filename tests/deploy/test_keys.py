"""scripts/deploy/keys.py: a CA, a SuperLink certificate for a host, hospital keys Flower accepts."""

from __future__ import annotations

import importlib.util
import ipaddress
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from tests.conftest import REPO

KEYS_SCRIPT = REPO / "scripts" / "deploy" / "keys.py"
spec = importlib.util.spec_from_file_location("deploy_keys", KEYS_SCRIPT)
keys = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keys)


def test_superlink_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    keys.make_ca(tmp_path)

    cert_path, key_path = keys.make_superlink_cert(tmp_path, ["10.0.0.5", "link.hospital.example"])

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert san.get_values_for_type(x509.DNSName) == ["link.hospital.example"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_hospital_keys_are_what_flower_registers_and_loads(tmp_path):
    private, public = keys.make_hospital_keys(tmp_path, "hospital-0")

    assert try_load_public_key(public)  # `flwr supernode register` reads it
    assert isinstance(
        load_ssh_private_key(private.read_bytes(), None), ec.EllipticCurvePrivateKey
    )  # as flower-supernode does
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_existing_keys_are_replaced_only_with_force(tmp_path):
    _, public = keys.make_hospital_keys(tmp_path, "hospital-0")
    before = public.read_bytes()

    with pytest.raises(FileExistsError, match="--force"):
        keys.make_hospital_keys(tmp_path, "hospital-0")
    keys.make_hospital_keys(tmp_path, "hospital-0", force=True)

    assert public.read_bytes() != before


def test_superlink_certificate_needs_the_ca_first(tmp_path):
    done = subprocess.run(
        [sys.executable, str(KEYS_SCRIPT), "--out", str(tmp_path), "superlink", "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2 and "run `python scripts/deploy/keys.py ca" in done.stderr


@pytest.mark.parametrize(
    "order",
    [["hospital", "hospital-0", "--force"], ["--force", "hospital", "hospital-0"]],
    ids=["force-after-the-command", "force-before-the-command"],
)
def test_rotation_as_documented_accepts_force_after_the_command(tmp_path, order):
    keys.main(["--out", str(tmp_path), "hospital", "hospital-0"])
    before = (tmp_path / "hospital-0.pub").read_bytes()

    code = keys.main(["--out", str(tmp_path), *order])

    assert code == 0 and (tmp_path / "hospital-0.pub").read_bytes() != before


def test_out_after_the_command_is_honoured(tmp_path):
    assert keys.main(["hospital", "hospital-9", "--out", str(tmp_path)]) == 0

    assert (tmp_path / "hospital-9.pub").is_file()

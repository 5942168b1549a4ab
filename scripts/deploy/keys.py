"""Create the secrets of a MedForge deployment: a CA, the SuperLink's TLS certificate, hospital keys.

Everything is written under one folder (default `deploy-keys/`, gitignored) with private keys mode
0600. Existing files are never overwritten unless `--force` is given (that is how keys are rotated).

    python scripts/deploy/keys.py ca                              # deploy-keys/ca.pem, ca.key
    python scripts/deploy/keys.py superlink --host 10.0.0.5       # superlink.pem, superlink.key
    python scripts/deploy/keys.py hospital hospital-0             # hospital-0 (private), hospital-0.pub
    python scripts/deploy/keys.py hospital hospital-0 --force     # rotate: a new key pair

The CA signs the SuperLink certificate; SuperNodes and the `flwr` CLI verify the SuperLink with
`ca.pem` (the only file besides its own key that a hospital receives). Hospital keys are NIST P-384
EC keys in OpenSSH format: the private key stays at the hospital (`flower-supernode
--auth-supernode-private-key`), the public key is registered at the SuperLink (`flwr supernode
register hospital-0.pub <connection>`).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SUPERLINK_DAYS = 825


def _write(path: Path, data: bytes, private: bool, force: bool) -> Path:
    """Write `data` to `path` (0600 for private keys); refuse to overwrite unless forced."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it (key rotation), or use another --out folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MedForge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=days)
    )


def make_ca(out: Path, force: bool = False) -> tuple[Path, Path]:
    """A self-signed CA (ca.pem, ca.key) that signs the SuperLink certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    builder = x509.CertificateBuilder().subject_name(_name("MedForge CA")).issuer_name(_name("MedForge CA"))
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()), CA_DAYS)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    cert = builder.sign(key, hashes.SHA384())
    key_path = _write(out / "ca.key", _pem_key(key), private=True, force=force)
    return _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force), key_path


def subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    """SAN entries: IP addresses as IPAddress, everything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_superlink_cert(out: Path, hosts: list[str], force: bool = False) -> tuple[Path, Path]:
    """The SuperLink's TLS certificate for `hosts` (names or IPs the hospitals dial), signed by the CA."""
    if not hosts:
        raise ValueError("give at least one --host: the name or IP address hospitals use to reach the SuperLink")
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if not ca_pem.exists() or not ca_key_path.exists():
        raise FileNotFoundError(f"no CA under {out}: run `python scripts/deploy/keys.py ca --out {out}` first")
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    builder = x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()), SUPERLINK_DAYS)
    builder = builder.add_extension(x509.SubjectAlternativeName(subject_alternative_names(hosts)), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA384())
    key_path = _write(out / "superlink.key", _pem_key(key), private=True, force=force)
    return _write(
        out / "superlink.pem", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force
    ), key_path


def make_hospital_keys(out: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """A hospital's node-authentication key pair (OpenSSH, P-384): `<name>` (private) and `<name>.pub`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"hospital name {name!r} must be a plain file name such as hospital-0")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = (
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode()
    )
    private_path = _write(out / name, private, private=True, force=force)
    return private_path, _write(out / f"{name}.pub", public, private=False, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("deploy-keys"),
        help="folder for every key and certificate (default: deploy-keys)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing files (rotation)")
    # --out and --force are accepted after the command too (`keys.py hospital hospital-0 --force`)
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="as --out before the command")
    anywhere.add_argument(
        "--force", action="store_true", default=argparse.SUPPRESS, help="replace existing files (rotation)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ca", parents=[anywhere], help="create the CA (ca.pem, ca.key)")
    superlink = commands.add_parser(
        "superlink", parents=[anywhere], help="create the SuperLink TLS certificate signed by the CA"
    )
    superlink.add_argument(
        "--host", action="append", required=True, help="host name or IP hospitals dial (repeat for several)"
    )
    hospital = commands.add_parser(
        "hospital", parents=[anywhere], help="create one hospital's node-authentication key pair"
    )
    hospital.add_argument("names", nargs="+", help="file names for the key pairs, e.g. hospital-0 hospital-1")
    args = parser.parse_args(argv)
    try:
        if args.command == "ca":
            written = make_ca(args.out, args.force)
        elif args.command == "superlink":
            written = make_superlink_cert(args.out, args.host, args.force)
        else:
            written = tuple(path for name in args.names for path in make_hospital_keys(args.out, name, args.force))
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

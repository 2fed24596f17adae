"""Key material for a real federation: a CA, the SuperLink's TLS certificate, and sites' EC P-384 keys.

Plain `cryptography` calls, so no openssl or ssh-keygen binary is needed. Private keys are written
with mode 0600 and never overwritten: rotating a key is a deliberate act (see docs/deployment.md).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .files import create_private_file, write_bytes_atomic


def _write_private(path: Path, data: bytes) -> None:
    if path.exists():
        raise FileExistsError(f"{path} exists: refusing to overwrite a private key (move it away to rotate it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private_file(path, data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(directory: str | Path, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """A CA (ca.crt, ca.key) and a server certificate (server.pem, server.key) valid for `hosts`.

    `hosts` are the names or IP addresses that sites dial: they go into the certificate's SANs.
    """
    directory = Path(directory)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-medlego federation CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .sign(ca_key, hashes.SHA384()))
    paths = {name: directory / name for name in ("ca.crt", "ca.key", "server.pem", "server.key")}
    _write_private(paths["ca.key"], _pem_key(ca_key))
    _write_private(paths["server.key"], _pem_key(server_key))
    write_bytes_atomic(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM))
    write_bytes_atomic(paths["server.pem"], server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def make_site_keys(directory: str | Path, site: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format (what SuperNode authentication expects): KEY and KEY.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(directory) / f"{site}_key"
    public = private.with_suffix(".pub")
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_bytes_atomic(public, openssh + f" {site}\n".encode())
    return private, public

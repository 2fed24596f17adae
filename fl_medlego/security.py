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

from .errors import UserError
from .files import create_private_file, write_bytes_atomic


def _write_private(path: Path, data: bytes) -> None:
    if path.exists():
        raise FileExistsError(f"{path} exists: refusing to overwrite a private key (move it away to rotate it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private_file(path, data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _server_certificate(ca_key, ca_cert: x509.Certificate, hosts: list[str], days: int):
    """A new key and a SuperLink certificate for `hosts` (its SANs), signed by the CA, within the CA's validity."""
    now = datetime.datetime.now(datetime.UTC)
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    expires = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(expires)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .sign(ca_key, hashes.SHA384()))
    return server_key, server_cert


def _write_server(directory: Path, ca_cert: x509.Certificate, server_key, server_cert) -> dict[str, Path]:
    paths = {name: directory / name for name in ("ca.crt", "server.pem", "server.key")}
    _write_private(paths["server.key"], _pem_key(server_key))
    write_bytes_atomic(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM))
    write_bytes_atomic(paths["server.pem"], server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


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
    server_key, server_cert = _server_certificate(ca_key, ca_cert, hosts, days)
    _write_private(directory / "ca.key", _pem_key(ca_key))
    return {"ca.key": directory / "ca.key", **_write_server(directory, ca_cert, server_key, server_cert)}


def issue_server_certificate(ca_dir: str | Path, directory: str | Path, hosts: list[str],
                             days: int = 365) -> dict[str, Path]:
    """A new SuperLink certificate (server.pem, server.key) for `hosts`, signed by the existing CA in `ca_dir`
    (its ca.crt and ca.key), with a copy of ca.crt: the sites keep the ca.crt they have. `directory` must
    not hold a server.key yet (a private key is never overwritten); ca.key stays where it is."""
    ca_dir, directory = Path(ca_dir), Path(directory)
    missing = [name for name in ("ca.crt", "ca.key") if not (ca_dir / name).is_file()]
    if missing:
        raise UserError(f"{ca_dir} has no {' or '.join(missing)}: give the folder `fl-medlego coordinator tls` "
                        "wrote the CA into")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    if ca_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
        raise UserError(f"{ca_dir}: ca.key is not the key of ca.crt; give the folder that holds the CA's own pair")
    if ca_cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise UserError(f"the CA in {ca_dir} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}: make a new one "
                        "(`fl-medlego coordinator tls` without --ca) and send its ca.crt to every site")
    if (directory / "server.key").exists():
        raise UserError(f"{directory / 'server.key'} exists: issue into a new folder, or move the old "
                        "server.key and server.pem away first")
    server_key, server_cert = _server_certificate(ca_key, ca_cert, hosts, days)
    return _write_server(directory, ca_cert, server_key, server_cert)


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

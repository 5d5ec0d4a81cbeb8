"""A throw-away certificate authority for TLS tests (HTTPS fetches, ``rediss://``), made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificate(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    *,
    ca: bool,
    names: list[str],
    ips: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A one-day certificate for ``subject`` with DNS ``names`` and IP ``ips`` as subject alternative names,
    signed by ``issuer_key`` (self-signed when ``issuer`` is None). Returns it with its new private key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or ()]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    signer = key if issuer is None else issuer_key
    return builder.sign(signer, hashes.SHA256()), key


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and one server certificate it signed."""

    ca_cert: Path
    cert: Path
    key: Path


def write_ca_and_server(directory: Path, names: list[str], ips: list[str] | None = None) -> TlsFiles:
    """Create a CA and a server certificate for ``names``/``ips`` under ``directory``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert, ca_key = certificate("fakesake test CA", ca_key, None, ca=True, names=[])
    leaf, leaf_key = certificate(names[0] if names else "server", ca_key, ca_cert.subject, ca=False, names=names,
                                 ips=ips)  # fmt: skip
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files

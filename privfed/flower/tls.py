"""Loopback TLS and node keys for the Flower engine: a one-run certificate authority and a SuperLink certificate for
127.0.0.1, and each SuperNode's authentication key, so that even a one-machine federation runs as a deployment
must (``flower-superlink --ssl-* --enable-supernode-auth``, ``flower-supernode --root-certificates
--auth-supernode-private-key``). Keys come from ``cryptography`` (OS CSPRNG), mode 0600; a real deployment uses the
hospital's or operator's own PKI instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class LoopbackTLS:
    ca_cert: Path       # PEM: what SuperNodes and the flwr CLI trust
    cert: Path          # PEM: the SuperLink's certificate (SAN 127.0.0.1, localhost)
    key: Path           # PEM: its private key (0600)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_loopback_tls(directory: str | Path, *, days: int = 7) -> LoopbackTLS:
    """Create (or reuse) a CA and a SuperLink certificate valid for `days` days in `directory`."""
    d = Path(directory)
    out = LoopbackTLS(d / "ca.pem", d / "superlink.pem", d / "superlink.key")
    if all(p.exists() for p in (out.ca_cert, out.cert, out.key)):
        return out
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privfed loopback CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(out.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return out


def make_node_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair for Flower's SuperNode authentication (``flwr supernode register PUB``,
    ``flower-supernode --auth-supernode-private-key KEY``), in the OpenSSH formats Flower 1.42 reads; reused if
    present. Returns (private key path, public key path)."""
    d = Path(directory)
    key_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
    if key_path.exists() and pub_path.exists():
        return key_path, pub_path
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()), 0o600)
    _write(pub_path, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH) + b"\n", 0o644)
    return key_path, pub_path

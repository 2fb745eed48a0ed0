"""A site's long-term identity (Ed25519) and the roster of sites that every site pins.

Layout of a site directory (``privfed site init SITE_DIR``; the in-process engine uses ``RUN_DIR/sites/<id>/``)::

    SITE_DIR/identity.key   Ed25519 private key, unencrypted PKCS#8 PEM, mode 0600 (never leaves the site)
    SITE_DIR/identity.pub   its public key (PEM), what the site hands to whoever builds the roster
    SITE_DIR/site.toml      the site's id and pinned policy (:mod:`privfed.parties.policy`)
    SITE_DIR/receipt.jsonl  the site's own signed receipt of its privacy spend (:mod:`audits.receipt`)

The roster (``roster.json``) maps site id -> raw public key (hex); its fingerprint is what the ledger records and
what every secure-aggregation signature is checked against. Keys are generated from the OS CSPRNG by
``cryptography`` and are long-term: one per site, not per round.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfed.errors import SiteKeyError, UnknownSiteError
from privfed.rundir import atomic_write_bytes

KEY_FILE = "identity.key"
PUB_FILE = "identity.pub"
ROSTER_VERSION = 1


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32-byte raw encoding of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``"sha256:" + hex(SHA-256(raw public key))`` — the value to compare out of band."""
    return "sha256:" + hashlib.sha256(raw_public(key)).hexdigest()


@dataclass(frozen=True)
class SiteIdentity:
    """A site's key pair as loaded from its directory. ``repr`` never shows the private key."""

    site_dir: Path
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"SiteIdentity({str(self.site_dir)!r}, {self.fingerprint})"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SiteKeyError(f"{path}: a site identity already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, 0o600)        # umask-proof
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_site(site_dir: str | Path, site_id: int | None = None) -> SiteIdentity:
    """Create a site's long-term identity in ``site_dir`` (key mode 0600). Refuses to overwrite an existing key.

    With ``site_id``, also writes a default ``site.toml`` (policy) when the site has none yet.
    """
    d = Path(site_dir)
    if (d / KEY_FILE).exists():
        raise SiteKeyError(f"{d / KEY_FILE}: a site identity already exists; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_private(d / KEY_FILE, pem)
    atomic_write_bytes(d / PUB_FILE, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(d / PUB_FILE, 0o644)     # public: readable by whoever builds the roster
    if site_id is not None and not (d / "site.toml").exists():
        from privfed.parties.policy import SitePolicy
        SitePolicy(site_id=site_id).save(d)
    return SiteIdentity(d, key)


def load_identity(site_dir: str | Path) -> SiteIdentity:
    """Load a site's identity; refuses a missing key or one readable by group or others (SiteKeyError)."""
    from audits.errors import LedgerKeyError
    from audits.receipt import load_site_private_key

    try:
        key = load_site_private_key(site_dir)
    except LedgerKeyError as e:
        raise SiteKeyError(f"site identity: {e} (create it with `privfed site init`)") from None
    return SiteIdentity(Path(site_dir), key)


def load_or_init(site_dir: str | Path) -> SiteIdentity:
    """The identity in ``site_dir``, created on first use (in-process engine: one per site, kept across runs)."""
    return load_identity(site_dir) if (Path(site_dir) / KEY_FILE).exists() else init_site(site_dir)


class Roster:
    """Site id -> Ed25519 public key: the enrolled sites. What every site pins and the ledger records."""

    def __init__(self, keys: Mapping[int, Ed25519PublicKey]) -> None:
        if not keys:
            raise ValueError("a roster needs at least one site")
        for sid, k in keys.items():
            if isinstance(sid, bool) or not isinstance(sid, int) or sid < 0:
                raise ValueError(f"site ids must be non-negative ints, got {sid!r}")
            if not isinstance(k, Ed25519PublicKey):
                raise TypeError(f"roster entry {sid} is not an Ed25519 public key")
        raws = [raw_public(k) for k in keys.values()]
        if len(set(raws)) != len(raws):
            raise ValueError("two sites of the roster share one public key")
        self._keys = dict(sorted(keys.items()))

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._keys)

    def public_key(self, site_id: int) -> Ed25519PublicKey:
        try:
            return self._keys[site_id]
        except KeyError:
            raise UnknownSiteError(f"site {site_id!r} is not on the roster") from None

    def raw(self) -> dict[int, bytes]:
        """id -> raw 32-byte public key (what :class:`secure_agg.Roster` is built from)."""
        return {i: raw_public(k) for i, k in self._keys.items()}

    def to_json(self) -> dict:
        return {"schema_version": ROSTER_VERSION, "sites": {str(i): r.hex() for i, r in self.raw().items()}}

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the canonical JSON of the sites map (the value recorded in the ledger)."""
        body = json.dumps(self.to_json()["sites"], sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(body).hexdigest()

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError:
            raise UnknownSiteError(f"{p}: roster file not found") from None
        except ValueError as e:
            raise UnknownSiteError(f"{p}: roster is not JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("schema_version") != ROSTER_VERSION \
                or not isinstance(raw.get("sites"), dict):
            raise UnknownSiteError(f"{p}: not a roster (schema_version {ROSTER_VERSION} with a 'sites' map)")
        keys = {}
        for sid, hexkey in raw["sites"].items():
            if not (isinstance(sid, str) and sid.isdigit() and isinstance(hexkey, str) and len(hexkey) == 64):
                raise UnknownSiteError(f"{p}: bad roster entry {sid!r}")
            try:
                keys[int(sid)] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey))
            except ValueError as e:
                raise UnknownSiteError(f"{p}: bad public key for site {sid} ({e})") from None
        return cls(keys)

"""Ed25519 keys: the run key that signs the ledger, and each site's long-term identity key that signs its receipt.

Files (DESIGN §4): ``RUN_DIR/keys/ledger.pub`` (PEM SubjectPublicKeyInfo; a raw 32-byte key as 64 hex characters is
also accepted) and ``RUN_DIR/keys/ledger.key`` (unencrypted PKCS#8 PEM, mode 0600, or any path the user gives).
A site: ``SITE_DIR/identity.key`` (PKCS#8 PEM, or the raw 32-byte private key as bytes or 64 hex characters; mode
0600) and ``SITE_DIR/identity.pub`` (same formats as ledger.pub); a roster names it by its raw public key in hex.

Trust note for auditors: a signature only proves that *someone holding the private key* wrote the ledger. Anyone
with the private key (or who can replace ledger.pub) can rewrite and re-sign the whole ledger. Auditors must
therefore obtain the key fingerprint (:func:`key_fingerprint`, printed by ``privfed audit verify``) out of band,
e.g. from the run's operator at run start, and pin it (``verify_run(..., expected_key_fingerprint=...)``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.canonical import sha256_hex
from audits.errors import LedgerKeyError, PinFormatError

PUBLIC_KEY_RELPATH = Path("keys") / "ledger.pub"
PRIVATE_KEY_RELPATH = Path("keys") / "ledger.key"
SITE_PRIVATE_KEY_FILENAME = "identity.key"
SITE_PUBLIC_KEY_FILENAME = "identity.pub"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as 64 lowercase hex characters (how rosters and receipts name a site key)."""
    return raw_public_bytes(public_key).hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Inverse of :func:`public_key_hex`; LedgerKeyError if ``text`` is not 64 hex characters of a valid key."""
    if not isinstance(text, str) or not _HEX64.match(text):
        raise LedgerKeyError(f"not a raw Ed25519 public key in hex (64 characters): {text!r:.80}")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError as e:
        raise LedgerKeyError(f"invalid Ed25519 public key: {e}") from None


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """``"sha256:" + hex(SHA-256(raw 32-byte Ed25519 public key))``: the value auditors pin out of band."""
    return "sha256:" + sha256_hex(raw_public_bytes(public_key))


def normalize_pin(text: str, *, what: str, prefix: bool) -> str:
    """A pinned value as given by a person: optional ``sha256:`` prefix (any case), hex of any case, surrounding
    blanks ignored. Returns ``"sha256:<hex>"`` (``prefix=True``: key fingerprints) or ``"<hex>"`` (head hashes);
    PinFormatError unless it is 64 hex digits."""
    if not isinstance(text, str):
        raise PinFormatError(f"the pinned {what} must be a string, not {type(text).__name__}")
    t = text.strip().lower()
    if t.startswith("sha256:"):
        t = t[len("sha256:"):]
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise PinFormatError(f"the pinned {what} {text!r} is not [sha256:]<64 hex digits>")
    return "sha256:" + t if prefix else t


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask-proof
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate_private_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key from the OS CSPRNG and write it to ``path`` with mode 0600. Refuses to overwrite."""
    if path.exists():
        raise LedgerKeyError(f"{path}: refusing to overwrite an existing private key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_atomic(path, pem, 0o600)
    return key


def write_public_key(path: Path, public_key: Ed25519PublicKey) -> None:
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(path, pem, 0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (unencrypted PKCS#8 PEM, or raw: 32 bytes or 64 hex characters); refuse it when
    group or others can read or write it (must be 0600 or stricter)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LedgerKeyError(f"{path}: private key not found") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LedgerKeyError(f"{path}: private key permissions are {stat.S_IMODE(st.st_mode):04o}; must be 0600")
    data = path.read_bytes()
    text = data.decode("ascii", errors="replace").strip()
    try:
        if len(data) == 32 and not data.startswith(b"-----"):
            return Ed25519PrivateKey.from_private_bytes(data)
        if _HEX64.match(text):
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise LedgerKeyError(f"{path}: not an unencrypted PEM or raw Ed25519 private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerKeyError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load ``ledger.pub`` or ``identity.pub``: PEM SubjectPublicKeyInfo, or the raw key as 64 hex characters."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LedgerKeyError(f"{path}: public key not found") from None
    text = data.decode("ascii", errors="replace").strip()
    try:
        if _HEX64.match(text):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise LedgerKeyError(f"{path}: not a PEM or raw-hex public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerKeyError(f"{path}: not an Ed25519 public key")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
        return True
    except InvalidSignature:
        return False

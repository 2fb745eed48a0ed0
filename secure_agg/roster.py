"""The pinned roster: site id -> long-term Ed25519 public identity key (the PKI every site trusts, DESIGN §1).

Each site pins the roster (and checks its fingerprint against the one in every setup) out of band, e.g. at
enrolment. The server never chooses it.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_agg.canonical import canonical
from secure_agg.errors import UnknownIdentityError

KEY_BYTES = 32


class Roster:
    """Immutable mapping site id (non-negative int) -> Ed25519 public key. Build with :meth:`from_public_bytes`."""

    __slots__ = ("_keys", "_raw", "_fingerprint")

    def __init__(self, keys: Mapping[int, Ed25519PublicKey]) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ValueError("a roster needs at least one site")
        raw: dict[int, bytes] = {}
        for i, k in keys.items():
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise TypeError(f"roster ids must be non-negative ints, got {i!r}")
            if not isinstance(k, Ed25519PublicKey):
                raise TypeError(f"roster key of site {i} must be an Ed25519PublicKey")
            raw[int(i)] = k.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if len(set(raw.values())) != len(raw):
            raise ValueError("two roster sites share one identity key")
        self._keys = {i: keys[i] for i in sorted(raw)}
        self._raw = {i: raw[i] for i in sorted(raw)}
        self._fingerprint = hashlib.sha256(canonical({str(i): raw[i].hex() for i in sorted(raw)})).hexdigest()

    @classmethod
    def from_public_bytes(cls, keys: Mapping[int, bytes]) -> "Roster":
        """Roster from raw 32-byte Ed25519 public keys; TypeError/ValueError on anything malformed."""
        if not isinstance(keys, Mapping):
            raise TypeError("keys must be a mapping id -> 32 raw bytes")
        out = {}
        for i, b in keys.items():
            if not isinstance(b, (bytes, bytearray)) or len(b) != KEY_BYTES:
                raise ValueError(f"identity key of site {i!r} must be 32 raw bytes")
            try:
                out[i] = Ed25519PublicKey.from_public_bytes(bytes(b))
            except ValueError as exc:
                raise ValueError(f"identity key of site {i!r} is not a valid Ed25519 public key") from exc
        return cls(out)

    @property
    def fingerprint(self) -> str:
        """hex SHA-256 of the canonical JSON (sorted keys, no spaces) of {str(id): raw public key hex}."""
        return self._fingerprint

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._keys)

    def public_key(self, i: int) -> Ed25519PublicKey:
        """The identity key of site ``i``; UnknownIdentityError when ``i`` is not in the roster."""
        try:
            return self._keys[int(i)]
        except (KeyError, TypeError, ValueError):
            raise UnknownIdentityError(f"site {i!r} is not in the pinned roster") from None

    def public_bytes(self, i: int) -> bytes:
        self.public_key(i)
        return self._raw[int(i)]

    def __contains__(self, i: object) -> bool:
        return isinstance(i, int) and not isinstance(i, bool) and i in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Roster(n={len(self)}, fingerprint={self._fingerprint[:16]}…)"

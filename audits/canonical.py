"""Canonical JSON for hashing and signing ledger records ("privfed-cjson/1").

The canonical form of a JSON value is exactly::

    json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

i.e. object keys sorted by Unicode code point, no insignificant whitespace, non-ASCII characters written raw in
UTF-8 (only ``"``, ``\\`` and control characters are escaped, controls as ``\\u`` and four hex digits except
``\\n \\r \\t \\b \\f``),
integers in decimal, floats in Python's shortest round-trip ``repr`` (e.g. ``0.1``, ``1e-05``, ``1e+16``), no NaN or
infinities, no duplicate keys. It is close to RFC 8785 (JCS) but not identical (JCS sorts by UTF-16 code units and
formats numbers like ECMAScript), so an independent verifier re-implements the rule above, not JCS.
A ledger line is the canonical form of its record followed by one ``\\n``; the verifier requires each stored line to
equal the canonical re-encoding of its parsed value, so any whitespace, escape or number-format change is detected.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

CANONICALIZATION = "privfed-cjson/1: json.dumps(sort_keys=True, separators=(',', ':'), ensure_ascii=False, " \
                   "allow_nan=False), UTF-8"


def _default(obj: Any) -> Any:
    # numpy scalars (np.int64, np.float32, np.bool_) convert losslessly; anything else is a caller error.
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy" and getattr(obj, "shape", None) == ():
        return item()
    raise TypeError(f"not JSON-serializable in a ledger record: {type(obj).__name__}")


def canonical_bytes(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value`` (see module docstring).

    Raises ValueError for NaN/inf or lone surrogates."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_default)
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"record text is not valid Unicode: {e}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def parse_canonical(line: bytes) -> Any:
    """Parse one ledger line (without its newline) and check it is in canonical form. Raises ValueError otherwise."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if canonical_bytes(value) != line:
        raise ValueError("not in canonical form (privfed-cjson/1): bytes differ from the canonical re-encoding")
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Canonical JSON bytes: what every hash and signature in the protocol covers (DESIGN §3.8)."""

from __future__ import annotations

import json
from typing import Any


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only (non-ASCII escaped as \\u plus four hex digits)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()

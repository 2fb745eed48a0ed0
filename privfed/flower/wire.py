"""The local wire between a site's ClientApp (started by its SuperNode for each message) and the site's own
long-lived process: one request and one reply per connection on a Unix socket in the site's directory.

A frame is a length-prefixed JSON header (the message's flat config; ``bytes`` values base64-tagged) followed by
an ``.npz`` of the named arrays, read back with ``allow_pickle=False``: nothing on this wire is ever unpickled.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

_LEN = struct.Struct(">Q")
MAX_FRAME = 1 << 31          # bytes: a frame larger than 2 GiB is refused, not allocated


class WireError(ConnectionError):
    """The other end closed, sent a malformed frame, or did not answer in time."""


def _tag(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b64": base64.b64encode(v).decode()}
    if isinstance(v, list):
        return [_tag(x) for x in v]
    return v


def _untag(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) != {"b64"}:
            raise WireError("malformed frame: unknown object in config")
        return base64.b64decode(v["b64"], validate=True)
    if isinstance(v, list):
        return [_untag(x) for x in v]
    return v


def pack(config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """One frame's body: JSON header, then the arrays as an uncompressed .npz."""
    head = json.dumps({k: _tag(v) for k, v in config.items()}, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(a) for k, a in arrays.items()})
    return _LEN.pack(len(head)) + head + buf.getvalue()


def unpack(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if len(body) < _LEN.size:
        raise WireError("malformed frame: too short")
    (n,) = _LEN.unpack_from(body)
    try:
        config = {k: _untag(v) for k, v in json.loads(body[_LEN.size:_LEN.size + n]).items()}
        with np.load(io.BytesIO(body[_LEN.size + n:]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise WireError(f"malformed frame: {e}") from None
    return config, arrays


def send_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(_LEN.pack(len(body)) + body)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if n > MAX_FRAME:
        raise WireError(f"frame of {n} bytes refused (limit {MAX_FRAME})")
    return _recv_exact(sock, n)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise WireError("connection closed mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def call(socket_path: str | Path, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
         timeout_s: float, connect_timeout_s: float = 60.0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Send one request to the site process and wait up to `timeout_s` seconds for its reply. A site process that
    is still starting (no socket yet) is waited for up to `connect_timeout_s` seconds."""
    deadline = time.monotonic() + connect_timeout_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout_s)
            s.connect(str(socket_path))
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            if time.monotonic() > deadline:
                raise WireError(f"site process at {socket_path}: {e}") from None
            time.sleep(0.5)
    with s:
        try:
            send_frame(s, pack(config, arrays))
            return unpack(recv_frame(s))
        except socket.timeout as e:
            raise WireError(f"site process at {socket_path}: {e}") from None

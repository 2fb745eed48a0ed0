"""SHA-256 of run artifacts (config.toml, checkpoints) as recorded in the ledger.

A file hashes to ``sha256(bytes)``. A directory (diffusers ``save_pretrained`` layout) hashes to the SHA-256 of the
UTF-8 text made of one line ``"<sha256 of file>  <relative posix path>\\n"`` per regular file under it, sorted by
path (the ``sha256sum`` format), skipping nothing; symlinks are refused. privfed must record checkpoint hashes with
this function so the verifier can recompute them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hex SHA-256 of a file, or of a directory tree (see module docstring)."""
    p = Path(path)
    if p.is_symlink():
        raise ValueError(f"{p}: symlinks are not hashed")
    if p.is_file():
        return _file_sha256(p)
    if p.is_dir():
        lines = []
        for f in sorted(p.rglob("*"), key=lambda q: q.relative_to(p).as_posix()):
            if f.is_symlink():
                raise ValueError(f"{f}: symlinks are not hashed")
            if f.is_file():
                lines.append(f"{_file_sha256(f)}  {f.relative_to(p).as_posix()}\n")
        return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    raise FileNotFoundError(f"{p}: no such file or directory")

"""RUN_DIR/pins.txt: the two values an auditor pins, written at the end of `privfed run` to be sent out of band.

The operator holds the ledger's private key (RUN_DIR/keys/ledger.key), so a signature alone proves nothing against
the operator. What does: the key fingerprint and the final head hash, sent to the sites and auditors through a
channel the operator cannot rewrite later (e-mail, a ticket, a signed letter), then given to
``privfed audit RUN_DIR --pin-key <key_fingerprint> --head <head_hash>``. A later rewrite of the ledger, even
re-signed with the same key, no longer contains that head.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from privfed.rundir import atomic_write_text

PINS_FILENAME = "pins.txt"
FIELDS = ("run_id", "key_fingerprint", "head_hash", "written_utc")


def write_pins(run_dir: str | Path, *, run_id: str, key_fingerprint: str, head_hash: str,
               now: datetime | None = None) -> Path:
    """Write RUN_DIR/pins.txt atomically (call it after the run_end record); return its path."""
    written = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {"run_id": run_id, "key_fingerprint": key_fingerprint, "head_hash": head_hash, "written_utc": written}
    text = ("# privfed pins: send this file out of band (not with the run directory) to the sites and auditors.\n"
            "# Verify with: privfed audit RUN_DIR --pin-key <key_fingerprint> --head <head_hash>\n"
            + "".join(f"{k}: {values[k]}\n" for k in FIELDS))
    path = Path(run_dir) / PINS_FILENAME
    atomic_write_text(path, text)
    return path


def read_pins(path: str | Path) -> dict[str, str]:
    """The ``key: value`` lines of a pins.txt (comments skipped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out

"""The Flower engine (DESIGN §1): the same server and sites as the in-process engine, across processes or machines.

- :mod:`privfed.flower.server_app`: Flower ``ServerApp`` running the server role (the federation loop, the ledger).
- :mod:`privfed.flower.client_app`: Flower ``ClientApp``, a thin relay from the SuperNode to the site's own
  long-lived process (:mod:`privfed.flower.site_daemon`) over a local socket in the site's directory.
- :mod:`privfed.flower.engine`: moves the parties' signed messages over Flower's ``Grid`` (one Flower message
  type per kind / secure-aggregation stage, every ``send_and_receive`` with a timeout; a missing reply is a
  dropout).
- :mod:`privfed.flower.launcher`: ``privfed run --engine flower`` on loopback (SuperLink, one SuperNode and one
  site process per site, ``flwr run``), stopping every process it started.

Why a long-lived site process: Flower starts a fresh ClientApp process for every message. Rebuilding a site there
(torch, the model, the data) would cost seconds per protocol stage, and its round secrets would have to be stored
between processes. The site process keeps them in memory; the ClientApp imports only Flower, numpy and the message
codec (no torch), so a stage round trip is bound by Flower's transport, not by imports.
"""

from __future__ import annotations

from pathlib import Path

from secure_agg.messages import STAGES as SECAGG_STAGES

APP_DIR = Path(__file__).resolve().parent / "fab"    # the Flower App (pyproject.toml with [tool.flwr.app])
SOCKET_NAME = "site.sock"                            # in the site's directory; mode 0600


def message_type(kind: str, stage: str | None = None) -> str:
    """The Flower message type that carries a privfed message: ``<category>.<action>`` (Flower requires the
    category to be train, evaluate or query). A secure-aggregation stage is its own action."""
    if kind == "secagg":
        return f"query.sa_{stage}"
    if kind in ("train", "upload", "ckks"):
        return f"train.{kind}"
    return f"query.{kind}"


MESSAGE_TYPES = tuple(sorted({message_type(k) for k in ("hello", "offer", "train", "upload", "ckks", "close")}
                             | {message_type("secagg", s) for s in SECAGG_STAGES}))

"""A site's long-lived process for the Flower engine (``privfed site serve``).

It builds the site exactly as the in-process engine does (its data, its DP half, its identity, policy and receipt)
and answers the messages its ClientApp relays over ``<site-dir>/site.sock`` (mode 0600: only the site's own account
can reach it). Its round secrets (the trained update, the secure-aggregation session) stay in this process's memory
and never pass through Flower's node state.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from privfed.flower import SOCKET_NAME
from privfed.flower.wire import WireError, pack, recv_frame, send_frame, unpack
from privfed.parties import messages as M

FAULT_ENV = "PRIVFED_FLOWER_FAULT"          # tests only: "<round>:<stage>" → SIGKILL our SuperNode on that message
FAULT_PID_ENV = "PRIVFED_FLOWER_NODE_PID"


def build_site(run_dir: str | Path, site_id: int, *, site_dir: str | Path | None = None, device: str = "cpu"):
    """The site of `site_id` for the run in `run_dir` (its config.toml, roster.json and keys/ledger.pub): it
    loads the run's dataset and keeps its own partition, as the in-process engine does."""
    from audits.keys import PUBLIC_KEY_RELPATH, load_public_key
    from privfed.errors import UnknownSiteError
    from privfed.federation.runner import FederatedRun
    from privfed.parties.identity import Roster
    from privfed.parties.site import Site

    run_dir = Path(run_dir)
    fr = FederatedRun.resume(run_dir)
    if not 0 <= site_id < len(fr.client_data):
        raise UnknownSiteError(f"site {site_id} is not one of the run's {len(fr.client_data)} sites")
    site = Site(site_id, site_dir=Path(site_dir) if site_dir else run_dir / "sites" / str(site_id),
                data=fr.client_data[site_id], cfg=fr.cfg, run_id=fr.run_id, delta=fr.privacy.delta,
                roster=Roster.load(run_dir / "roster.json"),
                server_key=load_public_key(run_dir / PUBLIC_KEY_RELPATH), device=device,
                privacy=fr.site_privacy[site_id])
    site.open_receipt()
    return site


def hello_reply(site, msg: M.Message) -> M.Message:
    """Answer the server's hello: this site's id, signed over the server's nonce."""
    if msg.run_id != site.run_id:
        raise M.InvalidMessage(f"hello for run {msg.run_id!r}, not {site.run_id!r}")
    reply = M.make("hello_reply", run_id=site.run_id, round_index=msg.round, sender=site.id, receiver=M.SERVER,
                   fields={"nonce": msg.fields["nonce"], "key_fingerprint": site.identity.fingerprint})
    return M.sign(reply, site.identity.private_key)


def _fault(msg: M.Message) -> bool:
    """Tests only: kill this site's SuperNode when the planned message arrives (a real crash, mid-protocol)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or msg.kind == "hello":
        return False
    r, stage = spec.split(":")
    what = msg.fields.get("sa.stage", msg.kind)
    if int(r) == msg.round and stage == what:
        os.kill(int(os.environ[FAULT_PID_ENV]), signal.SIGKILL)
        return True
    return False


def serve(site, site_dir: str | Path, *, ready=None) -> None:
    """Answer relayed messages until SIGTERM/SIGINT; one message at a time (a SuperNode runs one ClientApp at a
    time)."""
    path = Path(site_dir) / SOCKET_NAME
    path.unlink(missing_ok=True)
    old = os.umask(0o177)                        # the socket is created 0600
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(path))
    finally:
        os.umask(old)
    srv.listen(4)
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True
        srv.close()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if ready is not None:
        ready()
    try:
        while not stop["now"]:
            try:
                conn, _ = srv.accept()
            except OSError:
                break
            with conn:
                try:
                    msg = M.decode(*unpack(recv_frame(conn)))
                    if _fault(msg):
                        continue                  # silent from now on, as a crashed node is
                    reply = hello_reply(site, msg) if msg.kind == "hello" else site.handle(msg)
                    send_frame(conn, pack(*M.encode(reply)))
                except (WireError, M.InvalidMessage, OSError) as e:
                    print(f"site {site.id}: dropped a malformed request ({type(e).__name__}: {e})", file=sys.stderr)
    finally:
        site.close()
        path.unlink(missing_ok=True)

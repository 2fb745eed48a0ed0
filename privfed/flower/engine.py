"""The Flower engine's transport: the server's signed messages over Flower's ``Grid``.

Each privfed message travels as one Flower message (content: the ``privfed`` ConfigRecord and the ``arrays``
ArrayRecord; type ``query.<kind>``, ``train.<kind>`` or ``query.sa_<stage>``), and every ``send_and_receive`` has a
timeout. A site that does not answer in time (its machine or SuperNode died, its network broke) is a dropout: it is
silent for the rest of that round, and the aggregation protocol's recovery decides whether the round completes.

Which node is which site is learned by a ``hello``: the node's site answers with its roster identity's signature
over a fresh server nonce. A node that cannot sign for a roster site (a key not on the roster, or impersonating
another site) is refused, recorded in the ledger as a ``site_event``, and never sent anything.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable, Mapping

from flwr.app import Message

from privfed.errors import SiteError
from privfed.flower import message_type
from privfed.flower.records import from_record, to_record
from privfed.parties import messages as M
from secure_agg.errors import SecAggError


class FlowerEngine:
    """Delivers server messages to the sites' SuperNodes and returns their replies (absent: a dropout)."""

    def __init__(self, grid, *, run_id: str, roster, ledger, stage_timeout_s: float, train_timeout_s: float,
                 wait_for_nodes_s: float = 120.0, drop_plan: Callable[[int], set[int]] | None = None,
                 releases: Callable[[M.Message], bool] | None = None,
                 observer: Callable[[str, M.Message], None] | None = None, note: Callable[[str], None] = print):
        self.grid, self.run_id, self.roster, self.ledger = grid, run_id, roster, ledger
        self.stage_timeout_s, self.train_timeout_s = float(stage_timeout_s), float(train_timeout_s)
        self.wait_for_nodes_s = float(wait_for_nodes_s)
        self.drop_plan = drop_plan or (lambda r: set())
        self.releases = releases or (lambda m: False)
        self.observer = observer or (lambda direction, m: None)
        self.note = note
        self.nodes: dict[int, int] = {}          # site id -> Flower node id
        self.refused: set[int] = set()           # node ids that failed the hello
        self._silent: dict[int, set[int]] = {}
        self._waited = False
        self.poll_s = 0.1                        # seconds between pulls of replies (loopback or LAN: cheap)
        self.timings: list[tuple[str, int, int, float]] = []   # (message type, sent, answered, seconds)

    # -- who is who ----------------------------------------------------------------------------------------------
    def discover(self, round_index: int) -> None:
        """Map newly connected nodes to sites by a signed hello; forget nodes that left. Before the first round,
        wait (at most `wait_for_nodes_s` seconds) until every roster site has answered."""
        if self._waited:
            self._hello(round_index)
            return
        self._waited = True
        want = set(self.roster.raw())
        deadline = time.monotonic() + self.wait_for_nodes_s
        while True:
            self._hello(round_index)
            if want <= set(self.nodes) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if want - set(self.nodes):
            self.note(f"round {round_index}: no connected node for site(s) {sorted(want - set(self.nodes))} after "
                      f"{self.wait_for_nodes_s:.0f} s; going on without them")

    def _hello(self, round_index: int) -> None:
        live = set(self.grid.get_node_ids())
        self.nodes = {s: n for s, n in self.nodes.items() if n in live}
        fresh = sorted(live - set(self.nodes.values()) - self.refused)
        if not fresh:
            return
        nonces = {n: secrets.token_bytes(16) for n in fresh}
        out = []
        for n in fresh:
            hello = M.make("hello", run_id=self.run_id, round_index=round_index, sender=M.SERVER,
                           receiver=M.ANY_SITE, fields={"nonce": nonces[n]})
            out.append(Message(to_record(*M.encode(hello)), dst_node_id=n, message_type=message_type("hello"),
                               group_id=str(round_index), ttl=self.stage_timeout_s + 30))
        for rep in self._send_and_receive(out, self.stage_timeout_s):
            node = rep.metadata.src_node_id
            if node not in nonces or not rep.has_content():
                continue                                   # not answering now: asked again next round
            claimed = None
            try:
                m = M.decode(*from_record(rep.content))
                claimed = m.sender
                M.check_header(m, run_id=self.run_id, round_index=round_index, receiver=M.SERVER,
                               kinds=("hello_reply",))
                if m.fields["nonce"] != nonces[node]:
                    raise M.IntegrityError("hello reply does not echo this hello's nonce")
                M.verify(m, self.roster.public_key(m.sender))
                if m.sender in self.nodes:
                    raise SiteError(f"site {m.sender} is already connected through another node")
            except (SecAggError, SiteError, KeyError) as e:
                self._refuse(round_index, node, claimed, e)
                continue
            self.nodes[m.sender] = node
            self.note(f"site {m.sender} connected (node {node}, key {m.fields['key_fingerprint']})")

    def _refuse(self, round_index: int, node: int, claimed, err: Exception) -> None:
        self.refused.add(node)
        reason = f"SuperNode {node} refused at hello: {err}"
        self.ledger.append("site_event", {"round": round_index, "client": str(claimed if claimed is not None else -1),
                                          "event": "refused", "error": type(err).__name__, "reason": reason})
        self.note(f"round {round_index}: {reason}")

    # -- the engine interface -----------------------------------------------------------------------------------
    def send(self, messages: Mapping[int, M.Message],
             on_reply: Callable[[int, M.Message], None] | None = None) -> dict[int, M.Message]:
        """Deliver each message to its site's node; return {site: reply} for the sites that answered in time."""
        if not messages:
            return {}
        r = next(iter(messages.values())).round
        self.discover(r)
        silent = self._silent.setdefault(r, set())
        out_msgs, timeout = [], self.stage_timeout_s
        for sid in sorted(messages):
            msg = messages[sid]
            if sid in silent:
                continue
            if sid in self.drop_plan(msg.round) and self.releases(msg):
                silent.add(sid)          # a simulated dropout: silent before releasing anything of this round
                continue
            node = self.nodes.get(sid)
            if node is None:
                continue                 # not connected: a dropout
            if msg.kind == "train":
                timeout = self.train_timeout_s
            self.observer("to_site", msg)
            out_msgs.append(Message(to_record(*M.encode(msg)), dst_node_id=node,
                                    message_type=message_type(msg.kind, msg.fields.get("sa.stage")),
                                    group_id=str(r), ttl=timeout + 30))
        by_node = {n: s for s, n in self.nodes.items()}
        got: dict[int, M.Message] = {}
        for rep in self._send_and_receive(out_msgs, timeout):
            sid = by_node.get(rep.metadata.src_node_id)
            if sid is None or sid not in messages or not rep.has_content():
                continue
            try:
                m = M.decode(*from_record(rep.content))
            except SecAggError as e:
                self.note(f"round {r}: site {sid}: malformed reply dropped ({e})")
                continue
            self.observer("to_server", m)
            got[sid] = m
            if on_reply is not None:
                on_reply(sid, m)
        # a site that missed this message is treated as dropped for the rest of the round (a late reply is never
        # used), so later stages do not wait for it again
        silent.update(s for s in messages if s not in got)
        return got

    def _send_and_receive(self, out_msgs: list, timeout: float) -> list:
        """Push, then pull the replies every `poll_s` seconds until all came or `timeout` seconds passed.
        (``Grid.send_and_receive`` polls every 3 s, which would add ~1.5 s to each of a round's ~11 stages.)"""
        if not out_msgs:
            return []
        t0 = time.monotonic()
        kind = out_msgs[0].metadata.message_type
        waiting = set(self.grid.push_messages(out_msgs))
        replies: list = []
        while waiting and time.monotonic() - t0 < timeout:
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(self.poll_s)
        self.timings.append((kind, len(out_msgs), len(replies), time.monotonic() - t0))
        return replies

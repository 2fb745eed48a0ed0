"""The in-process engine (the embedded default): one server and N sites in one process, no network.

It only moves messages. Every message crosses the same codec a networked engine uses (:func:`messages.encode` /
:func:`messages.decode`, i.e. what a Flower ``RecordDict`` carries), so what arrives is exactly what a remote party
would see. It can simulate unreliable sites: a site planned to drop in a round goes silent just before it would
release its update (the plaintext upload, or the secure-aggregation stage that returns its masked input), and
stays silent for the rest of that round.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from privfed.parties import messages as M


def transport(m: M.Message) -> M.Message:
    """What crossing a network does to a message: encode, copy, decode (strict)."""
    return _transport(m)


def _transport(m: M.Message) -> M.Message:
    config, arrays = M.encode(m)
    # copy the arrays: the receiver must not share memory with the sender
    return M.decode(dict(config), {k: np.array(v, copy=True) for k, v in arrays.items()})


class InProcessEngine:
    """Delivers server messages to site objects and returns their replies (absent: the site dropped)."""

    def __init__(self, sites: Mapping[int, object], *,
                 drop_plan: Callable[[int], set[int]] | None = None,
                 releases: Callable[[M.Message], bool] | None = None,
                 reseal: bool = False,
                 observer: Callable[[str, M.Message], None] | None = None) -> None:
        self.sites = dict(sites)
        self.drop_plan = drop_plan or (lambda r: set())
        self.releases = releases or (lambda m: False)
        self.reseal = reseal
        self.observer = observer or (lambda direction, m: None)
        self._silent: dict[int, set[int]] = {}

    def send(self, messages: Mapping[int, M.Message],
             on_reply: Callable[[int, M.Message], None] | None = None) -> dict[int, M.Message]:
        """Deliver each message to its site; return {site: reply} for the sites that answered."""
        out: dict[int, M.Message] = {}
        for sid in sorted(messages):
            msg = messages[sid]
            site = self.sites.get(sid)
            silent = self._silent.setdefault(msg.round, set())
            if site is None or sid in silent:
                continue
            if sid in self.drop_plan(msg.round) and self.releases(msg):
                silent.add(sid)          # goes silent before releasing anything of this round
                continue
            delivered = _transport(msg)
            self.observer("to_site", delivered)
            if self.reseal:
                # what a process-per-message engine does: the site's round state only survives sealed
                site.unseal_state(site.seal_state(), round_index=msg.round)
            reply = _transport(site.handle(delivered))
            self.observer("to_server", reply)
            out[sid] = reply
            if on_reply is not None:
                on_reply(sid, reply)
        return out


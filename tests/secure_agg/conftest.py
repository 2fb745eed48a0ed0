"""A hand-driven round (ServerSession + SiteSessions with long-term Ed25519 identities) for adversarial tests."""

import numpy as np
import pytest

from secure_agg import ProtocolPolicy, Roster, SecAggParams, ServerSession, SiteSession
from secure_agg.hazmat import signing
from secure_agg.messages import STAGES


class Round:
    def __init__(self, n=5, dim=16, run_id="run", round_index=1, params=None, policy=None, first_id=10,
                 idents=None):
        self.ids = list(range(first_id, first_id + n))
        self.params = params or SecAggParams(mode="secagg")
        self.policy = policy or ProtocolPolicy(min_clients=2)
        self.idents = idents or {c: signing.generate() for c in self.ids}
        self.roster = Roster({c: k.public_key() for c, k in self.idents.items()})
        self.run_id, self.round_index, self.dim = run_id, round_index, dim
        self.server = ServerSession(run_id=run_id, round_index=round_index, client_ids=self.ids, params=self.params,
                                    dim=dim, roster=self.roster)
        self.sites = {c: self.site(c) for c in self.ids}
        self.inputs = {c: np.linspace(-1, 1, dim) * (i + 1) / n for i, c in enumerate(self.ids)}
        for c in self.ids:
            self.sites[c].set_input(self.inputs[c])
        self.inbox = None

    def site(self, c, **kw):
        kw.setdefault("policy", self.policy)
        return SiteSession(c, run_id=kw.pop("run_id", self.run_id), round_index=kw.pop("round_index",
                           self.round_index), identity=self.idents[c], roster=self.roster, **kw)

    def start(self):
        self.inbox = self.server.start()
        return self.inbox

    def replies(self, drop=()):
        return [self.sites[c].handle(m) for c, m in sorted(self.inbox.items()) if c not in drop]

    def step(self, drop=(), tamper=None):
        """All live sites reply to the current inbox (minus ``drop``); ``tamper(replies)`` may edit them."""
        reps = self.replies(drop)
        if tamper is not None:
            reps = tamper(reps)
        self.inbox = self.server.advance(reps)
        return self.inbox

    def run_until(self, stage, drops=None):
        """Drive the round until the server's messages for ``stage`` are in ``self.inbox`` (not yet answered)."""
        drops = drops or {}
        if self.inbox is None:
            self.start()
        while self.server.stage != stage:
            self.step(drop=drops.get(self.server.stage, ()))
        return self.inbox

    def finish(self, drops=None):
        drops = drops or {}
        if self.inbox is None:
            self.start()
        while not self.server.done:
            self.step(drop=drops.get(self.server.stage, ()))
        return self.server.result()

    def exact_sum(self, survivors):
        return sum(np.clip(self.inputs[c], -1, 1) for c in survivors)


@pytest.fixture
def make_round():
    return Round


assert STAGES[0] == "commit"

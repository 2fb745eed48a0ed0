"""A hand-driven round (server + clients + Ed25519 identities) for adversarial tests."""

import numpy as np
import pytest

from secure_agg.client import SecAggClient
from secure_agg.hazmat import signing
from secure_agg.server import SecAggServer


class Round:
    def __init__(self, n=5, t=None, degree=None, dim=16, run_id="run", round_index=1, identities=True):
        self.ids = list(range(10, 10 + n))
        self.t = t if t is not None else n // 2 + 1
        self.dim = dim
        idents = {c: signing.generate() for c in self.ids} if identities else None
        self.registry = {c: k.public_key() for c, k in idents.items()} if identities else None
        self.server = SecAggServer(self.ids, run_id=run_id, round_index=round_index, threshold=self.t,
                                   degree=degree or n - 1, clip_range=1.0, dim=dim, identity_registry=self.registry)
        self.clients = {c: SecAggClient(c, run_id=run_id, round_index=round_index,
                                        identity=idents[c] if identities else None,
                                        identity_registry=self.registry) for c in self.ids}
        self.inputs = {c: np.linspace(-1, 1, dim) * (i + 1) / n for i, c in enumerate(self.ids)}
        self.rng = np.random.default_rng(0)

    def to_advertise(self):
        self.setup = self.server.setup()
        return [self.clients[c].advertise_keys(self.setup) for c in self.ids]

    def to_share_keys(self, drop=()):
        adv = [m for m in self.to_advertise() if m.sender not in drop]
        self.keys = self.server.advertise_stage(adv)
        return self.keys

    def to_masked_input(self, drop=()):
        keys = self.to_share_keys()
        shares = [self.clients[c].share_keys(m) for c, m in keys.items() if c not in drop]
        self.cts = self.server.share_keys_stage(shares)
        return self.cts

    def to_consistency(self, drop=()):
        cts = self.to_masked_input()
        masked = [self.clients[c].masked_input(m, self.inputs[c], self.rng) for c, m in cts.items() if c not in drop]
        self.creq = self.server.masked_input_stage(masked)
        return self.creq

    def to_unmask(self, drop=(), masked_drop=()):
        creq = self.to_consistency(drop=masked_drop)
        acks = [self.clients[c].consistency(m) for c, m in creq.items() if c not in drop]
        self.ureq = self.server.consistency_stage(acks)
        return self.ureq


@pytest.fixture
def make_round():
    return Round

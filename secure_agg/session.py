"""The in-process runner: one secure-sum round with every site and the server running their real stage machines
(:class:`~secure_agg.site.SiteSession`, :class:`~secure_agg.server.ServerSession`) and exchanging the real
messages; only the transport is a function call. ``dropouts`` simulates sites that go silent just before sending
a stage's reply.

Threat model (details and exact statements: ``secure_agg/THREAT_MODEL.md``). Every site pins the roster (site id
-> long-term Ed25519 key) and a :class:`~secure_agg.policy.ProtocolPolicy`; every site message is signed and bound
to (run, round, stage, setup hash), where the setup hash covers the roster fingerprint, ids, t, degree, the
quantization and, from the advertise stage on, the commit-reveal graph seed and participants.

* Honest-but-curious server: learns only the sum of the survivors' quantized inputs and who took part in each
  stage; with up to t − 1 colluding sites it learns nothing more (Bonawitz et al. 2017); SecAgg+: the same with
  probability >= 1 − 2^-failure_log2 over the commit-reveal graph, whose degree the sites check against the
  Bell et al. 2020 bound (:mod:`secure_agg.degree_bound`).
* Active server, no colluding sites: it cannot substitute keys, forge or relabel messages (every one is signed
  and bound to run, round, stage and setup hash), show sites different setups (the signed setup hash differs),
  choose the graph (commit-reveal), lower t, n or the degree below the sites' policy, or obtain both secrets of
  one site (signed survivor list, t > n/2). It can drop honest sites (down to t survivors), abort and restart a
  round (visible in the ledger), and sees participation.
* Active server with up to n_C = max_colluders colluding sites: the same holds when every honest site pins
  max_colluders >= n_C, which makes it refuse any t < floor((n + n_C)/2) + 1 — below that bound, colluders sign
  two survivor views and an honest site's input can be recovered.

The identities are long-term keys held by the sites; the ``roster``/``identities`` arguments of
:func:`secure_sum_in_process` let a caller supply them. When absent they are generated per call: a test and
benchmark convenience only, which authenticates nothing across calls.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from secure_agg.hazmat import signing
from secure_agg.messages import STAGES, is_id
from secure_agg.params import SecAggParams, validate_params  # noqa: F401  (re-exported)
from secure_agg.policy import ProtocolPolicy
from secure_agg.roster import Roster
from secure_agg.server import SecureSumResult, ServerSession
from secure_agg.site import SiteSession

DROPOUT_STAGES = STAGES


def _validate(inputs, params, run_id, round_index, rng, dropouts):
    if not isinstance(params, SecAggParams):
        raise TypeError("params must be SecAggParams")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty str")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise ValueError("round_index must be a non-negative int")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be None (OS CSPRNG) or a numpy.random.Generator (reproducible experiments)")
    if not isinstance(inputs, Mapping) or len(inputs) < 2:
        raise ValueError("secure aggregation needs a mapping of at least 2 clients")
    vecs: dict[int, np.ndarray] = {}
    for cid, v in inputs.items():
        if not is_id(cid):
            raise TypeError(f"client ids must be non-negative ints, got {cid!r}")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"input of client {cid} must be a non-empty 1-D vector")
        vecs[int(cid)] = a   # finiteness: checked once, by SiteSession.set_input, before the round starts
    if len({a.shape for a in vecs.values()}) != 1:
        raise ValueError("all inputs must have the same length")
    drops: dict[str, set[int]] = {s: set() for s in DROPOUT_STAGES}
    for stage, ids in (dropouts or {}).items():
        if stage not in drops:
            raise ValueError(f"unknown dropout stage {stage!r}; use {DROPOUT_STAGES}")
        for c in ids:
            if not is_id(c) or int(c) not in vecs:
                raise ValueError(f"dropout id {c!r} is not a client")
            drops[stage].add(int(c))
    return vecs, drops


def policy_for(params: SecAggParams) -> ProtocolPolicy:
    """The policy a site would pin to accept exactly what ``params`` proposes (used when none is given)."""
    return ProtocolPolicy(min_clients=2, max_colluders=params.max_colluders, failure_log2=params.failure_log2,
                          max_dropout_fraction=params.dropout_fraction)


def rounding_seeds(ids, rng: np.random.Generator | None) -> dict[int, bytes | None]:
    """Per-site rounding seeds: None (each site draws its own from the OS CSPRNG) or, for a reproducible
    experiment, 32 bytes per site drawn from ``rng`` in sorted id order."""
    return {c: (None if rng is None else rng.bytes(32)) for c in sorted(ids)}


def secure_sum_in_process(inputs: Mapping[int, np.ndarray], *, params: SecAggParams, run_id: str, round_index: int,
                          rng: np.random.Generator | None = None,
                          dropouts: Mapping[str, Iterable[int]] | None = None,
                          roster: Roster | None = None, identities: Mapping[int, object] | None = None,
                          policy: ProtocolPolicy | None = None) -> SecureSumResult:
    """Sum of the survivors' quantized inputs through one full SecAgg/SecAgg+ round.

    rng: None -> every site rounds with its own OS-CSPRNG generator; a Generator -> per-site seeds drawn from it
    (explicit reproducible experiments only). roster + identities: the sites' long-term keys (generated per call
    when both are absent). policy: what every site pins (default: what ``params`` proposes, see
    :func:`policy_for`). Raises ProtocolAbort (ThresholdError, PolicyViolation, ...) when the round aborts;
    ValueError/TypeError for bad arguments.
    """
    vecs, drops = _validate(inputs, params, run_id, round_index, rng, dropouts)
    ids = sorted(vecs)
    n, dim = len(ids), next(iter(vecs.values())).shape[0]
    t = params.threshold(n)
    if not (2 * t > n and 2 <= t <= n):
        raise ValueError(f"threshold_fraction={params.threshold_fraction} gives unsafe t={t} for n={n}")
    if (roster is None) != (identities is None):
        raise ValueError("roster and identities go together")
    if roster is None:
        identities = {c: signing.generate() for c in ids}
        roster = Roster({c: k.public_key() for c, k in identities.items()})
    policy = policy_for(params) if policy is None else policy
    server = ServerSession(run_id=run_id, round_index=round_index, client_ids=ids, params=params, dim=dim,
                           roster=roster)
    seeds = rounding_seeds(ids, rng)
    sites = {c: SiteSession(c, run_id=run_id, round_index=round_index, identity=identities[c], roster=roster,
                            policy=policy, rounding_seed=seeds[c]) for c in ids}
    for c in ids:
        try:
            sites[c].set_input(vecs[c])
        except ValueError as exc:
            raise ValueError(f"input of client {c}: {exc}") from None
    inbox = server.start()
    while not server.done:
        stage = server.stage
        replies = []
        for c in sorted(inbox):
            if c in drops[stage]:
                continue
            replies.append(sites[c].handle(inbox[c]))
        inbox = server.advance(replies)
    return server.result()


def new_site_key() -> bytes:
    """A fresh 32-byte site-local sealing key from the OS CSPRNG (for :meth:`SiteSession.seal`)."""
    return os.urandom(32)

"""The safe facade used by ``privfed``: one secure-sum round driven in process (DESIGN §3.1, §3.4).

Every client and the server run their real stage machines and exchange the real messages; only the transport is
a function call. ``dropouts`` simulates clients that go silent just before sending a stage's message.

Threat model. Honest-but-curious server, any number of dropouts down to t: the server learns only the sum of the
survivors' quantized inputs (plus who survived each stage); any coalition of fewer than t clients together with
the server learns nothing more (the Bonawitz et al. bound; for SecAgg+ the local threshold applies per
neighbourhood and the guarantee holds with high probability over the public random graph, Bell et al.). Active
server: with Ed25519 identities and an authentic PKI (every client knows every peer's identity key, e.g. from
enrolment), substituted keys, forged/misrouted/tampered shares, replays, cross-round messages, inconsistent
survivor lists, survivor/dropped overlap and unsafe thresholds are all rejected; the server can still drop honest
clients to shrink the survivor set to t (so t > n/2 limits how small a sum it can isolate), and it sees the
participation pattern. In-process, the identities are generated per call and stand in for that PKI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from secure_agg import graph
from secure_agg.client import SecAggClient
from secure_agg.hazmat import signing
from secure_agg.messages import VERSION, is_id
from secure_agg.quantize import make_quantizer
from secure_agg.server import SecAggServer

MODES = ("secagg", "secagg+")
DROPOUT_STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmasking")
_TRANSCRIPT_STAGE = {"advertise_keys": "advertise", "share_keys": "share_keys_stage",
                     "masked_input": "masked_input_stage", "consistency": "consistency_stage",
                     "unmasking": "unmasking_stage"}


@dataclass(frozen=True)
class SecAggParams:
    mode: str = "secagg+"            # "secagg" (full graph) | "secagg+" (sparse graph)
    clip_range: float = 1.0          # per-coordinate clip before quantization
    threshold_fraction: float = 0.67 # t = floor(frac*n)+1, must give t > n/2
    neighbours: int | None = None    # None -> auto O(log n)
    modulus_bits: int | None = None  # None -> auto

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.clip_range, bool) or not isinstance(self.clip_range, (int, float)) \
                or not math.isfinite(self.clip_range) or self.clip_range <= 0:
            raise ValueError("clip_range must be a positive finite number")
        f = self.threshold_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.5 <= f < 1.0:
            raise ValueError("threshold_fraction must be in [0.5, 1)")
        if self.neighbours is not None and (isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int)
                                            or self.neighbours < 1):
            raise ValueError("neighbours must be None or a positive int")
        if self.modulus_bits is not None and (isinstance(self.modulus_bits, bool)
                                              or not isinstance(self.modulus_bits, int)
                                              or not 1 <= self.modulus_bits <= 32):
            raise ValueError("modulus_bits must be None or an int in 1..32")

    def threshold(self, n: int) -> int:
        return int(math.floor(self.threshold_fraction * n)) + 1

    def degree(self, n: int) -> int:
        if self.mode == "secagg":
            return n - 1
        k = graph.auto_degree(n) if self.neighbours is None else self.neighbours
        return graph.effective_degree(n, k)


@dataclass(frozen=True)
class SecureSumResult:
    sum: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    dropped: dict
    reconstructed: dict
    threshold: int
    transcript: dict


def _validate(inputs, params, run_id, round_index, rng, dropouts):
    if not isinstance(params, SecAggParams):
        raise TypeError("params must be SecAggParams")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty str")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise ValueError("round_index must be a non-negative int")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator")
    if not isinstance(inputs, Mapping) or len(inputs) < 2:
        raise ValueError("secure aggregation needs a mapping of at least 2 clients")
    vecs: dict[int, np.ndarray] = {}
    for cid, v in inputs.items():
        if not is_id(cid):
            raise TypeError(f"client ids must be non-negative ints, got {cid!r}")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"input of client {cid} must be a non-empty 1-D vector")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"input of client {cid} has NaN/inf")
        vecs[int(cid)] = a
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


def secure_sum_in_process(inputs: Mapping[int, np.ndarray], *, params: SecAggParams, run_id: str, round_index: int,
                          rng: np.random.Generator,
                          dropouts: Mapping[str, Iterable[int]] | None = None) -> "SecureSumResult":
    """Sum of the survivors' quantized inputs through one full SecAgg/SecAgg+ round.

    Raises ProtocolAbort (ThresholdError) when fewer than t clients survive any stage, or when a sparse
    neighbourhood falls below its local threshold; ValueError/TypeError for bad arguments.
    """
    vecs, drops = _validate(inputs, params, run_id, round_index, rng, dropouts)
    ids = sorted(vecs)
    n, dim = len(ids), next(iter(vecs.values())).shape[0]
    t = params.threshold(n)
    if not (2 * t > n and 2 <= t <= n):
        raise ValueError(f"threshold_fraction={params.threshold_fraction} gives unsafe t={t} for n={n}")
    quantizer = make_quantizer(n_clients=n, clip_range=params.clip_range, modulus_bits=params.modulus_bits)
    degree = params.degree(n)
    # Identity keys simulate the PKI (enrolment) that the real deployment provides out of band.
    idents = {c: signing.generate() for c in ids}
    registry = {c: k.public_key() for c, k in idents.items()}
    server = SecAggServer(ids, run_id=run_id, round_index=round_index, threshold=t, degree=degree,
                          clip_range=params.clip_range, dim=dim, modulus_bits=quantizer.modulus_bits,
                          identity_registry=registry)
    clients = {c: SecAggClient(c, run_id=run_id, round_index=round_index, identity=idents[c],
                               identity_registry=registry) for c in ids}
    dropped: dict[str, list[int]] = {s: [] for s in DROPOUT_STAGES}
    alive = set(ids)

    def step(stage: str, inbox: Mapping[int, object], call) -> list:
        gone = sorted(alive & drops[stage])
        dropped[stage] = gone
        alive.difference_update(gone)
        return [call(c, inbox[c]) for c in sorted(inbox) if c in alive]

    setup = server.setup()
    m = step("advertise_keys", {c: setup for c in ids}, lambda c, msg: clients[c].advertise_keys(msg))
    inbox = server.advertise_stage(m)
    m = step("share_keys", inbox, lambda c, msg: clients[c].share_keys(msg))
    inbox = server.share_keys_stage(m)
    m = step("masked_input", inbox, lambda c, msg: clients[c].masked_input(msg, vecs[c], rng))
    inbox = server.masked_input_stage(m)
    m = step("consistency", inbox, lambda c, msg: clients[c].consistency(msg))
    inbox = server.consistency_stage(m)
    m = step("unmasking", inbox, lambda c, msg: clients[c].unmask(msg))
    res = server.unmasking_stage(m)
    survivors = tuple(int(c) for c in res.survivors)
    total = quantizer.dequantize_sum(res.total, len(survivors))
    reconstructed = {"self_mask": list(res.self_mask_reconstructed_for),
                     "mask_key": list(res.pairwise_reconstructed_for)}
    transcript = {
        "protocol": "pairwise-mask secure aggregation (Bonawitz et al. 2017; SecAgg+ graph, Bell et al. 2020)",
        "protocol_version": VERSION, "mode": params.mode, "n": n, "threshold": t, "neighbours": degree,
        "modulus_bits": quantizer.modulus_bits, "levels_per_client": quantizer.levels,
        "quantization_step": quantizer.step, "clip_range": quantizer.clip_range,
        "sum_error_bound": quantizer.error_bound(len(survivors)), "dimension": dim,
        "survivors": list(survivors),
        "dropped": {_TRANSCRIPT_STAGE[s]: list(v) for s, v in dropped.items()},
        "reconstructed": {"self_mask_reconstructed_for": list(res.self_mask_reconstructed_for),
                          "pairwise_reconstructed_for": list(res.pairwise_reconstructed_for)},
        "identities": "ed25519",
    }
    return SecureSumResult(sum=total, survivors=survivors, dropped={s: list(v) for s, v in dropped.items()},
                           reconstructed=reconstructed, threshold=t, transcript=transcript)

"""Aggregation backends behind one interface and registry: plaintext FedAvg and pairwise-mask secure aggregation.

An aggregator is the server's half of one upload: it sends the sites the messages of its protocol through an
``exchange`` (signing, transport and verification are the caller's) and returns an :class:`AggregateResult`:
``(total, total_weight)`` — the sum of the contributors' weighted updates and the sum of their weights. Nothing is
normalised here and undone later; the privacy layer turns the aggregate into the global step.

Each site pre-scales its update by ``w_i / weight_total`` (``weight_total`` = Σ w over the round's participants,
sent in the upload request), so that the secure aggregator's per-coordinate quantization range holds the sum; the
aggregator multiplies that public scale back out, so the result is ``(Σ w_i Δ_i, Σ w_i)`` over the contributors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from privfed.parties import messages as M

# exchange(kind, {site: fields}, {site: arrays}) -> {site: reply Message} (absent: dropped or refused)
Exchange = Callable[[str, Mapping[int, Mapping[str, Any]], Mapping[int, Mapping[str, np.ndarray]]],
                    dict[int, M.Message]]


@dataclass
class AggregateResult:
    """What the server learned from one upload: the sum and weight of the contributors, and the transcript."""

    total: torch.Tensor                     # float64 Σ_i w_i Δ_i over the contributors
    total_weight: float                     # Σ_i w_i over the contributors
    contributors: list[int]
    released: list[int]                     # sites whose update (masked or plain) reached the server
    transcript: dict[str, Any] = field(default_factory=dict)
    excluded: dict[int, str] = field(default_factory=dict)   # site -> named error


def client_weights(updates: Sequence[Any]) -> dict[int, float]:
    """FedAvg weights n_i / Σ n_j (or each update's explicit `weight`); the reference for tests."""
    raw = {u.client_id: (u.weight if u.weight is not None else float(u.num_examples)) for u in updates}
    total = sum(raw.values())
    return {c: w / total for c, w in raw.items()}


def fedavg(updates: Sequence[Any]) -> torch.Tensor:
    """Weighted mean Σ n_i Δ_i / Σ n_i (float64 accumulation): the plaintext reference."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    w = client_weights(updates)
    acc = torch.zeros_like(updates[0].delta, dtype=torch.float64)
    for u in updates:
        acc += w[u.client_id] * u.delta.double()
    return acc.float()


class PlainAggregator:
    """Secure aggregation OFF: every site uploads its weighted update in the clear and the server sees each one.

    Labelled as such in the transcript (``plaintext: true``), the ledger and the report.
    """

    name = "off"

    def __init__(self, cfg=None, **_: Any) -> None:
        self.cfg = cfg

    def aggregate(self, exchange: Exchange, *, round_index: int, participants: Sequence[int],
                  weights: Mapping[int, float], dim: int) -> AggregateResult:
        wt = float(sum(weights[c] for c in participants))
        replies = exchange("upload", {c: {"weight_total": wt} for c in participants}, {})
        total = torch.zeros(dim, dtype=torch.float64)
        got, excluded = [], {}
        for c, m in sorted(replies.items()):
            d = m.arrays.get("delta")
            if m.kind != "plain_update" or d is None or d.shape != (dim,) or not np.all(np.isfinite(d)):
                excluded[c] = "InvalidMessage"
                continue
            total += torch.from_numpy(d.astype(np.float64))
            got.append(c)
        tw = float(sum(weights[c] for c in got))
        return AggregateResult(total * wt, tw, got, got, {"mode": "off", "plaintext": True, "n": len(got),
                                                     "note": "secure aggregation off: the server saw every "
                                                             "site's update in the clear"}, excluded)


class SecureAggregator:
    """Pairwise-mask secure aggregation (SecAgg / SecAgg+): the server drives the stages and sees only the sum."""

    def __init__(self, cfg, *, run_id: str, roster) -> None:
        from secure_agg import Roster as SARoster, SecAggParams

        self.cfg = cfg
        self.name = cfg.mode
        self.run_id = run_id
        self.roster = roster
        self.sa_roster = SARoster.from_public_bytes(roster.raw())
        self.params = SecAggParams(mode=cfg.mode, clip_range=cfg.clip_range,
                                   threshold_fraction=cfg.threshold_fraction, max_colluders=cfg.max_colluders,
                                   failure_log2=cfg.failure_log2, dropout_fraction=max(0.1, cfg.dropout_rate))

    def aggregate(self, exchange: Exchange, *, round_index: int, participants: Sequence[int],
                  weights: Mapping[int, float], dim: int) -> AggregateResult:
        from secure_agg import ServerSession, codec
        from secure_agg.errors import ProtocolAbort

        wt = float(sum(weights[c] for c in participants))
        session = ServerSession(run_id=self.run_id, round_index=round_index, client_ids=list(participants),
                                params=self.params, dim=dim, roster=self.sa_roster)
        excluded: dict[int, str] = {}
        released: set[int] = set()
        try:
            out = session.start()
            while True:
                fields, arrays = {}, {}
                for c, msg in out.items():
                    conf, arr = codec.encode(msg)
                    fields[c] = {"weight_total": wt, **{M.SA_PREFIX + k: v for k, v in conf.items()}}
                    arrays[c] = {M.SA_PREFIX + k: v for k, v in arr.items()}
                replies = exchange("secagg", fields, arrays)
                inner = []
                for c, m in sorted(replies.items()):
                    try:
                        if m.kind != "secagg_reply":
                            raise M.InvalidMessage(f"expected secagg_reply, got {m.kind}")
                        conf = {k[len(M.SA_PREFIX):]: v for k, v in m.fields.items() if k.startswith(M.SA_PREFIX)}
                        arr = {k[len(M.SA_PREFIX):]: v for k, v in m.arrays.items() if k.startswith(M.SA_PREFIX)}
                        sm = codec.decode(conf, arr)
                    except M.InvalidMessage as e:
                        excluded[c] = type(e).__name__
                        continue
                    if getattr(sm, "stage", "") == "masked_input":
                        released.add(c)
                    inner.append(sm)
                out = session.advance(inner)
                if session.done:
                    break
            res = session.result()
        except ProtocolAbort as e:
            # fewer than t survivors (or an inconsistency): nothing is revealed; the global model stays as it was
            return AggregateResult(torch.zeros(dim, dtype=torch.float64), 0.0, [], sorted(released),
                                   {"mode": self.cfg.mode, "aborted": f"{type(e).__name__}: {e}", "survivors": []},
                                   excluded)
        survivors = sorted(int(c) for c in res.survivors)
        transcript = dict(res.transcript)
        excluded.update({int(c): str(v) for c, v in getattr(res, "excluded", {}).items()})
        tw = float(sum(weights[c] for c in survivors))
        return AggregateResult(torch.from_numpy(np.asarray(res.sum, dtype=np.float64)) * wt, tw, survivors,
                               sorted(released), transcript, excluded)


def build_aggregator(cfg, *, run_id: str, roster):
    """The registry: secure-aggregation mode name -> aggregator (server half)."""
    registry = {"off": PlainAggregator, "secagg": SecureAggregator, "secagg+": SecureAggregator}
    if cfg.mode not in registry:
        raise ValueError(f"unknown aggregation {cfg.mode!r}; choose one of {sorted(registry)}")
    return registry[cfg.mode](cfg, run_id=run_id, roster=roster)


def releases_update(msg: M.Message) -> bool:
    """Whether the site's reply to ``msg`` would carry its update (plain, or masked): the engine's dropout
    simulation withholds exactly these messages from a site planned to drop."""
    if msg.kind == "upload":
        return True
    if msg.kind != "secagg":
        return False
    from secure_agg import codec

    conf = {k[len(M.SA_PREFIX):]: v for k, v in msg.fields.items() if k.startswith(M.SA_PREFIX)}
    arr = {k[len(M.SA_PREFIX):]: v for k, v in msg.arrays.items() if k.startswith(M.SA_PREFIX)}
    from secure_agg.messages import CiphertextBroadcast

    # the reply to the ciphertext broadcast is the site's masked input
    return isinstance(codec.decode(conf, arr), CiphertextBroadcast)

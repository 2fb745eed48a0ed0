"""Server stage machine: routes messages, sums masked inputs, reconstructs masks, returns only the sum.

Each ``*_stage`` method takes the batch of client messages that arrived for that stage (dropouts simply do not
appear), validates them, aborts with ThresholdError below the threshold, and returns the next message per client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from secure_agg import graph
from secure_agg.client import check_threshold
from secure_agg.errors import IntegrityError, InvalidMessage, StageOrderError, ThresholdError
from secure_agg.hazmat import hkdf, prg, shamir, signing, x25519
from secure_agg.messages import (SERVER, STAGE_INDEX, VERSION, AdvertiseKeys, CiphertextBroadcast, ConsistencyAck,
                                 ConsistencyRequest, EncryptedShares, KeysBroadcast, MaskedInput, SetupRequest,
                                 UnmaskRequest, UnmaskShares, advertise_payload, collect, consistency_payload, is_id)
from secure_agg.quantize import make_quantizer


@dataclass(frozen=True)
class ServerResult:
    total: np.ndarray          # uint64 integer sum of the survivors' quantized inputs (never wrapped)
    survivors: tuple[int, ...]
    self_mask_reconstructed_for: tuple[int, ...]
    pairwise_reconstructed_for: tuple[int, ...]
    live: dict                 # stage -> sorted ids whose message arrived


class SecAggServer:
    def __init__(self, client_ids: Iterable[int], *, run_id: str, round_index: int, threshold: int, degree: int,
                 clip_range: float, dim: int, modulus_bits: int | None = None,
                 identity_registry: Mapping[int, signing.Ed25519PublicKey] | None = None) -> None:
        ids = sorted(int(c) for c in client_ids)
        if not all(is_id(c) for c in ids) or len(set(ids)) != len(ids):
            raise ValueError("client ids must be distinct non-negative ints")
        n = len(ids)
        check_threshold(threshold, n)
        if not 1 <= degree <= n - 1:
            raise ValueError("degree must be in 1..n-1")
        degree = graph.effective_degree(n, degree)
        self.run_id, self.round_index, self.ids, self.n, self.t = run_id, round_index, ids, n, threshold
        self.degree, self.dim = degree, int(dim)
        self.quantizer = make_quantizer(n_clients=n, clip_range=clip_range, modulus_bits=modulus_bits)
        self.seed = graph.graph_seed(run_id, round_index)
        self.neigh = graph.neighbours(ids, degree, self.seed)
        self.t_loc = {u: graph.local_threshold(t=threshold, n=n, holders=len(self.neigh[u]) + 1) for u in ids}
        self.x = {c: i + 1 for i, c in enumerate(ids)}
        self._registry = identity_registry
        self._stage = "setup"
        self.live: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"SecAggServer(run={self.run_id!r}, round={self.round_index}, n={self.n}, t={self.t}, stage={self._stage!r})"

    def _advance(self, expected: str, nxt: str) -> None:
        if self._stage != expected:
            raise StageOrderError(f"server is at stage {self._stage!r}, not {expected!r}")
        self._stage = nxt

    def _hdr(self, stage: str) -> tuple:
        return (VERSION, self.run_id, self.round_index, stage, SERVER)

    def _need(self, got: Mapping, stage: str) -> None:
        self.live[stage] = sorted(got)
        if len(got) < self.t:
            raise ThresholdError(f"stage {stage!r}: {len(got)} clients left < threshold {self.t}; round aborted")

    def setup(self) -> SetupRequest:
        self._advance("setup", "advertise_keys")
        q = self.quantizer
        return SetupRequest(*self._hdr("setup"), client_ids=tuple(self.ids), threshold=self.t, degree=self.degree,
                            modulus_bits=q.modulus_bits, levels=q.levels, clip_range=q.clip_range, dim=self.dim,
                            graph_seed=self.seed)

    def advertise_stage(self, msgs: Iterable[AdvertiseKeys]) -> dict[int, KeysBroadcast]:
        self._advance("advertise_keys", "share_keys")
        got = collect(msgs, AdvertiseKeys, run_id=self.run_id, round_index=self.round_index, stage="advertise_keys",
                      allowed=set(self.ids))
        self._need(got, "advertise_keys")
        for u, m in got.items():
            if self._registry is not None:
                if u not in self._registry:
                    raise IntegrityError(f"no identity key for client {u}")
                signing.verify(self._registry[u], m.signature,
                               advertise_payload(VERSION, self.run_id, self.round_index, u, m.c_pk, m.s_pk))
        self.u1 = set(got)
        self.s_pk = {u: m.s_pk for u, m in got.items()}
        out = {}
        for u in got:
            keys = {v: (got[v].c_pk, got[v].s_pk, got[v].signature) for v in (self.neigh[u] | {u}) & self.u1}
            out[u] = KeysBroadcast(*self._hdr("advertise_keys"), keys=keys)
        return out

    def share_keys_stage(self, msgs: Iterable[EncryptedShares]) -> dict[int, CiphertextBroadcast]:
        self._advance("share_keys", "masked_input")
        got = collect(msgs, EncryptedShares, run_id=self.run_id, round_index=self.round_index, stage="share_keys",
                      allowed=self.u1)
        self._need(got, "share_keys")
        for u, m in got.items():
            if set(m.ciphertexts) != self.neigh[u] & self.u1:
                raise InvalidMessage(f"client {u} did not encrypt shares for exactly its keyed neighbours")
        self.u2 = set(got)
        out = {}
        for u in self.u2:
            out[u] = CiphertextBroadcast(*self._hdr("share_keys"),
                                         ciphertexts={v: got[v].ciphertexts[u] for v in self.neigh[u] & self.u2})
        return out

    def masked_input_stage(self, msgs: Iterable[MaskedInput]) -> dict[int, ConsistencyRequest]:
        self._advance("masked_input", "consistency")
        got = collect(msgs, MaskedInput, run_id=self.run_id, round_index=self.round_index, stage="masked_input",
                      allowed=self.u2)
        self._need(got, "masked_input")
        total = np.zeros(self.dim, dtype=np.uint32)
        for u, m in got.items():
            y = m.masked
            if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.shape != (self.dim,):
                raise InvalidMessage(f"masked input of client {u} must be uint32[{self.dim}]")
            if self.quantizer.modulus_bits < 32 and np.any(y > self.quantizer.modulus_mask):
                raise InvalidMessage(f"masked input of client {u} is outside Z_2^k")
            np.add(total, y, out=total)
        self._total = total
        self.u3 = tuple(sorted(got))
        return {u: ConsistencyRequest(*self._hdr("masked_input"), survivors=self.u3) for u in self.u3}

    def consistency_stage(self, msgs: Iterable[ConsistencyAck]) -> dict[int, UnmaskRequest]:
        self._advance("consistency", "unmasking")
        got = collect(msgs, ConsistencyAck, run_id=self.run_id, round_index=self.round_index, stage="consistency",
                      allowed=set(self.u3))
        self._need(got, "consistency")
        if self._registry is not None:
            payload = consistency_payload(VERSION, self.run_id, self.round_index, self.u3)
            for u, m in got.items():
                signing.verify(self._registry[u], m.signature, payload)
        self.u4 = tuple(sorted(got))
        gone = self.u2 - set(self.u3)
        out = {}
        for u in self.u4:
            hold = self.neigh[u] | {u}
            out[u] = UnmaskRequest(*self._hdr("consistency"), survivors=self.u3,
                                   dropped=tuple(sorted(gone & self.neigh[u])), signers=self.u4,
                                   signatures={v: got[v].signature for v in self.u4 if v in hold})
        return out

    def unmasking_stage(self, msgs: Iterable[UnmaskShares]) -> ServerResult:
        self._advance("unmasking", "done")
        got = collect(msgs, UnmaskShares, run_id=self.run_id, round_index=self.round_index, stage="unmasking",
                      allowed=set(self.u4))
        self._need(got, "unmasking")
        b_sh: dict[int, dict[int, bytes]] = {u: {} for u in self.u3}
        k_sh: dict[int, dict[int, bytes]] = {v: {} for v in self.u2 - set(self.u3)}
        for w, m in got.items():
            for u, s in m.self_mask_shares.items():
                if u not in b_sh or (u != w and u not in self.neigh[w]):
                    raise InvalidMessage(f"client {w} sent a self-mask share for {u!r}")
                b_sh[u][self.x[w]] = s
            for v, s in m.key_shares.items():
                if v not in k_sh or v not in self.neigh[w]:
                    raise InvalidMessage(f"client {w} sent a mask-key share for {v!r}")
                k_sh[v][self.x[w]] = s
        total = self._total
        add, sub = [], []
        for u in self.u3:
            if len(b_sh[u]) < self.t_loc[u]:
                raise ThresholdError(f"only {len(b_sh[u])} self-mask shares for client {u} < {self.t_loc[u]}")
            try:
                sub.append(shamir.reconstruct(b_sh[u], threshold=self.t_loc[u]))
            except ValueError as exc:
                raise IntegrityError(f"self-mask shares of client {u} are inconsistent") from exc
        pairwise = []
        for v in sorted(k_sh):
            peers = self.neigh[v] & set(self.u3)
            if not peers:
                continue
            if len(k_sh[v]) < self.t_loc[v]:
                raise ThresholdError(f"only {len(k_sh[v])} mask-key shares for client {v} < {self.t_loc[v]}")
            try:
                sk = x25519.private_from_bytes(shamir.reconstruct(k_sh[v], threshold=self.t_loc[v]))
            except ValueError as exc:
                raise IntegrityError(f"mask-key shares of client {v} are inconsistent") from exc
            if x25519.public_bytes(sk) != self.s_pk[v]:
                raise IntegrityError(f"reconstructed mask key of client {v} does not match its public key")
            pairwise.append(v)
            for w in sorted(peers):  # w masked with +PRG if w < v, −PRG if w > v: undo it
                seed = hkdf.derive_key(x25519.agree(sk, self.s_pk[w]), label=hkdf.LABEL_PAIRWISE_MASK,
                                       run_id=self.run_id, round_index=self.round_index, a=v, b=w)
                (sub if w < v else add).append(seed)
        prg.apply_masks(total, add, sub)
        total = (total & np.uint32(self.quantizer.modulus_mask)).astype(np.uint64)
        return ServerResult(total=total, survivors=self.u3, self_mask_reconstructed_for=self.u3,
                            pairwise_reconstructed_for=tuple(pairwise), live=dict(self.live))

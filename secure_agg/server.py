"""Server stage machine: relays messages, checks every signature, sums masked inputs, reconstructs masks, and
returns only the sum (:class:`ServerSession`).

``advance(replies)`` takes the replies that arrived for the current stage (an absent site has dropped). A reply
that is invalid — bad signature, low-order X25519 key, wrong stage/round/run, duplicate, a share that is not on
the dealer's polynomial — *excludes its sender*: the error's class name is recorded in ``result().excluded`` and
the round continues without it. Only fewer than t live sites (ThresholdError), a missing graph-seed reveal in a
sparse round (IncompleteRevealError) or shares that cannot be attributed (IntegrityError) abort the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from secure_agg import graph, graph_seed
from secure_agg.errors import (BadShareError, DuplicateClientError, IncompleteRevealError, IntegrityError,
                               InvalidMessage, ProtocolAbort, SecAggError, StageOrderError, ThresholdError)
from secure_agg.hazmat import hkdf, prg, shamir_robust, signing, x25519
from secure_agg.hazmat.shamir import SHARE_BYTES
from secure_agg.messages import (SERVER, SITE_MESSAGES, STAGES, VERSION, CiphertextBroadcast, CommitList,
                                 ConsistencyRequest, KeysBroadcast, RevealList, Setup, UnmaskRequest, check_bytes,
                                 check_bytes_list, check_header, check_parallel, digest, full_setup_hash, is_id,
                                 setup_hash, signed_payload)
from secure_agg.params import SecAggParams
from secure_agg.quantize import make_quantizer
from secure_agg.roster import Roster
from secure_agg.site import b_commitment, check_threshold, masked_digest, share_x, shares_digest


@dataclass(frozen=True)
class SecureSumResult:
    """sum: float64 dequantized sum of the survivors' clipped inputs (error <= transcript["sum_error_bound"]);
    survivors: sites whose masked input is in the sum; dropped: stage -> sites that sent nothing at that stage;
    excluded: site -> name of the error that excluded it; reconstructed: whose self-mask / mask key was rebuilt;
    transcript: JSON-able record of the round (no secrets)."""
    sum: np.ndarray = field(repr=False)
    survivors: tuple
    dropped: dict
    reconstructed: dict
    threshold: int
    transcript: dict
    excluded: dict = field(default_factory=dict)


# what one bad reply may raise while it is checked: excluded, never a crash of the server
_REPLY_ERRORS = (SecAggError, TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


class ServerSession:
    """The server's side of one round. ``start()``, then ``advance(replies)`` until ``done``; ``result()``."""

    def __init__(self, *, run_id: str, round_index: int, client_ids: Iterable[int], params: SecAggParams, dim: int,
                 roster: Roster) -> None:
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty str")
        if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
            raise ValueError("round_index must be a non-negative int")
        if not isinstance(params, SecAggParams):
            raise TypeError("params must be SecAggParams")
        if not isinstance(roster, Roster):
            raise TypeError("roster must be a Roster")
        ids = sorted(int(c) if is_id(c) else c for c in client_ids)
        if not all(is_id(c) for c in ids) or len(set(ids)) != len(ids) or len(ids) < 2:
            raise ValueError("client ids must be at least 2 distinct non-negative ints")
        for c in ids:
            if c not in roster:
                raise ValueError(f"site {c} is not in the roster")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError("dim must be a positive int")
        n = len(ids)
        t = params.threshold(n)
        if not (2 * t > n and 2 <= t <= n):
            raise ValueError(f"threshold_fraction={params.threshold_fraction} gives unsafe t={t} for n={n}")
        check_threshold(t, n)
        self.run_id, self.round_index, self.ids, self.n, self.t, self.dim = run_id, round_index, ids, n, t, dim
        self.params, self.roster = params, roster
        self.degree, self.degree_rule = params.degree_and_rule(n)
        self.quantizer = make_quantizer(n_clients=n, clip_range=params.clip_range, modulus_bits=params.modulus_bits)
        q = self.quantizer
        self.setup = Setup(VERSION, run_id, round_index, "commit", SERVER, client_ids=tuple(ids), threshold=t,
                           degree=self.degree, modulus_bits=q.modulus_bits, levels=q.levels,
                           clip_range=float(q.clip_range), dim=dim, roster_fingerprint=roster.fingerprint,
                           degree_rule=self.degree_rule)
        self.pre = setup_hash(self.setup)
        self._stage = "setup"
        self.live: dict[str, list[int]] = {}
        self.dropped: dict[str, list[int]] = {s: [] for s in STAGES}
        self.excluded: dict[int, str] = {}
        self._alive = set(ids)
        self._result: SecureSumResult | None = None

    def __repr__(self) -> str:
        return (f"ServerSession(run={self.run_id!r}, round={self.round_index}, n={self.n}, t={self.t}, "
                f"stage={self._stage!r})")

    @property
    def stage(self) -> str:
        """The stage whose replies ``advance`` expects ("setup" before start, "done" at the end)."""
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage == "done"

    def start(self) -> dict:
        if self._stage != "setup":
            raise StageOrderError("start() was already called")
        self._stage = "commit"
        return {c: self.setup for c in self.ids}

    def result(self) -> SecureSumResult:
        if self._result is None:
            raise StageOrderError(f"the round is not finished (stage {self._stage!r})")
        return self._result

    def advance(self, replies: Iterable) -> dict:
        """Process the current stage's replies; return the next message per site ({} when done)."""
        if self._stage in ("setup", "done", "aborted"):
            raise StageOrderError(f"advance() at stage {self._stage!r}")
        stage = self._stage
        try:
            got = self._collect(replies, stage)
            out = getattr(self, "_after_" + stage)(got)
        except ProtocolAbort:
            self._stage = "aborted"
            raise
        if self._stage == stage:
            self._stage = STAGES[STAGES.index(stage) + 1] if stage != STAGES[-1] else "done"
        return out

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _exclude(self, site: int, exc: BaseException) -> None:
        if not isinstance(exc, SecAggError):   # a malformed reply (wrong field types) is an invalid message
            exc = InvalidMessage(f"malformed reply: {type(exc).__name__}")
        self.excluded.setdefault(int(site), type(exc).__name__)
        self._alive.discard(int(site))

    def _collect(self, replies, stage: str) -> dict:
        cls = SITE_MESSAGES[stage]
        expected = set(self._alive)
        got, bad = {}, set()
        for m in replies:
            sender = getattr(m, "sender", None)
            if not is_id(sender) or int(sender) not in expected:
                continue   # not a live site of this round: ignore (a forged sender cannot exclude anyone)
            u = int(sender)
            try:
                check_header(m, cls, run_id=self.run_id, round_index=self.round_index, stage=stage)
                if u in got and getattr(m, "signature", None) == got[u].signature:
                    continue   # the same signed reply delivered twice (a transport retry): ignore the copy
                if u in got or u in bad:
                    raise DuplicateClientError(f"site {u} sent two different replies at stage {stage!r}")
                got[u] = m
            except _REPLY_ERRORS as exc:
                got.pop(u, None)
                bad.add(u)
                self._exclude(u, exc)
        self.dropped[stage] = sorted(expected - set(got) - bad)
        self._alive -= set(self.dropped[stage])
        return got

    def _verify(self, u: int, sig, stage: str, setup: bytes, body) -> None:
        signing.verify(self.roster.public_key(u), sig,
                       signed_payload(run_id=self.run_id, round_index=self.round_index, stage=stage, sender=u,
                                      setup=setup, body=body))

    def _keep(self, got: dict, stage: str, check) -> dict:
        ok = {}
        for u in sorted(got):
            try:
                check(u, got[u])
                ok[u] = got[u]
            except _REPLY_ERRORS as exc:
                self._exclude(u, exc)
        self.live[stage] = sorted(ok)
        if len(ok) < self.t:
            raise ThresholdError(f"stage {stage!r}: {len(ok)} sites left < threshold {self.t}; round aborted")
        return ok

    def _hdr(self, stage: str) -> tuple:
        return (VERSION, self.run_id, self.round_index, stage, SERVER)

    # -- stages ----------------------------------------------------------------------------------------------------
    def _after_commit(self, got):
        def check(u, m):
            check_bytes(m.commitment, 32, "commitment")
            self._verify(u, m.signature, "commit", self.pre, {"commitment": m.commitment.hex()})
        ok = self._keep(got, "commit", check)
        self.commit_ids = tuple(sorted(ok))
        self.commitments = {u: ok[u].commitment for u in ok}
        self.list_hash = graph_seed.commit_list_hash(self.pre, self.commit_ids,
                                                     [self.commitments[u] for u in self.commit_ids])
        msg = CommitList(*self._hdr("reveal"), ids=self.commit_ids,
                         commitments=tuple(self.commitments[u] for u in self.commit_ids),
                         signatures=tuple(ok[u].signature for u in self.commit_ids))
        return {u: msg for u in self.commit_ids}

    def _after_reveal(self, got):
        def check(u, m):
            check_bytes(m.nonce, graph_seed.NONCE_BYTES, "nonce")
            self._verify(u, m.signature, "reveal", self.pre, {"commit_list": self.list_hash.hex(),
                                                             "nonce": m.nonce.hex()})
            if graph_seed.commitment(self.pre, u, m.nonce) != self.commitments[u]:
                raise IncompleteRevealError(f"site {u}'s nonce does not open its commitment")
        ok = self._keep(got, "reveal", check)
        sparse = self.degree < len(self.commit_ids) - 1
        if sparse and tuple(sorted(ok)) != self.commit_ids:
            missing = sorted(set(self.commit_ids) - set(ok))
            raise IncompleteRevealError(f"sites {missing} committed graph randomness but did not reveal it; a "
                                        "sparse graph needs every contribution (start a new round)")
        self.participants = tuple(sorted(ok))
        nonces = [ok[u].nonce for u in self.participants]
        self.graph_seed = graph_seed.seed(self.list_hash, self.participants, nonces)
        self.full = full_setup_hash(self.pre, self.list_hash, self.participants, self.graph_seed)
        self.neigh = graph.neighbours(self.participants, self.degree, self.graph_seed)
        full_graph = self.degree >= len(self.participants) - 1
        self.t_loc = {u: (self.t if full_graph else graph.local_threshold(t=self.t, n=self.n,
                                                                          holders=len(self.neigh[u]) + 1))
                      for u in self.participants}
        msg = RevealList(*self._hdr("advertise_keys"), ids=self.participants, nonces=tuple(nonces),
                         signatures=tuple(ok[u].signature for u in self.participants))
        return {u: msg for u in self.participants}

    def _after_advertise_keys(self, got):
        def check(u, m):
            check_bytes(m.c_pk, 32, "c_pk")
            check_bytes(m.s_pk, 32, "s_pk")
            self._verify(u, m.signature, "advertise_keys", self.full, {"c_pk": m.c_pk.hex(), "s_pk": m.s_pk.hex()})
            x25519.check_public(m.c_pk)   # LowOrderKeyError: excluded, the round continues
            x25519.check_public(m.s_pk)
            if m.c_pk == m.s_pk:
                raise DuplicateClientError("c_pk == s_pk")
        ok = self._keep(got, "advertise_keys", check)
        self.u1 = set(ok)
        self.s_pk = {u: m.s_pk for u, m in ok.items()}
        out = {}
        for u in sorted(ok):
            ks = sorted((self.neigh[u] | {u}) & self.u1)
            out[u] = KeysBroadcast(*self._hdr("share_keys"), ids=tuple(ks), c_pks=tuple(ok[v].c_pk for v in ks),
                                   s_pks=tuple(ok[v].s_pk for v in ks),
                                   signatures=tuple(ok[v].signature for v in ks))
        return out

    def _after_share_keys(self, got):
        def check(u, m):
            rec = check_parallel(m.receivers, m.ciphertexts, what="receivers")
            check_bytes(m.b_commitment, 32, "b_commitment")
            if set(rec) != self.neigh[u] & self.u1:
                raise InvalidMessage(f"site {u} did not encrypt shares for exactly its keyed neighbours")
            check_bytes_list(m.ciphertexts, None, "ciphertext")
            self._verify(u, m.signature, "share_keys", self.full,
                         {"receivers": list(rec), "ciphertexts": digest(*m.ciphertexts),
                          "b_commitment": m.b_commitment.hex()})
        ok = self._keep(got, "share_keys", check)
        self.u2 = set(ok)
        self.b_commit = {u: m.b_commitment for u, m in ok.items()}
        ct = {u: dict(zip(m.receivers, m.ciphertexts)) for u, m in ok.items()}
        out = {}
        for u in sorted(self.u2):
            senders = sorted(v for v in self.neigh[u] & self.u2 if u in ct[v])
            out[u] = CiphertextBroadcast(*self._hdr("masked_input"), senders=tuple(senders),
                                         ciphertexts=tuple(ct[v][u] for v in senders))
        return out

    def _after_masked_input(self, got):
        q = self.quantizer

        def check(u, m):
            y = m.masked
            if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.shape != (self.dim,):
                raise InvalidMessage(f"masked input of site {u} must be uint32[{self.dim}]")
            if q.modulus_bits < 32 and np.any(y > q.modulus_mask):
                raise InvalidMessage(f"masked input of site {u} is outside Z_2^k")
            self._verify(u, m.signature, "masked_input", self.full, {"masked": masked_digest(y), "dim": self.dim})
        ok = self._keep(got, "masked_input", check)
        total = np.zeros(self.dim, dtype=np.uint32)
        for u in sorted(ok):
            np.add(total, ok[u].masked, out=total)
        self._total = total
        self.u3 = tuple(sorted(ok))
        msg = ConsistencyRequest(*self._hdr("consistency"), survivors=self.u3)
        return {u: msg for u in self.u3}

    def _after_consistency(self, got):
        def check(u, m):
            self._verify(u, m.signature, "consistency", self.full, {"survivors": list(self.u3)})
        ok = self._keep(got, "consistency", check)
        self.u4 = tuple(sorted(ok))
        gone = self.u2 - set(self.u3)
        out = {}
        for u in self.u4:
            sig_ids = tuple(v for v in self.u4 if v in self.neigh[u] or v == u)
            out[u] = UnmaskRequest(*self._hdr("unmasking"), survivors=self.u3,
                                   dropped=tuple(sorted(gone & self.neigh[u])), signers=self.u4,
                                   signer_ids=sig_ids, signatures=tuple(ok[v].signature for v in sig_ids))
        return out

    def _after_unmasking(self, got):
        gone = self.u2 - set(self.u3)

        def check(u, m):
            b_ids = check_parallel(m.self_mask_ids, m.self_mask_shares, what="self_mask_ids")
            k_ids = check_parallel(m.key_ids, m.key_shares, what="key_ids")
            check_bytes_list(m.self_mask_shares, SHARE_BYTES, "self-mask share")
            check_bytes_list(m.key_shares, SHARE_BYTES, "key share")
            holds = self.neigh[u] | {u}
            if not set(b_ids) <= set(self.u3) & holds or not set(k_ids) <= gone & self.neigh[u]:
                raise InvalidMessage(f"site {u} sent shares for sites it does not hold")
            self._verify(u, m.signature, "unmasking", self.full,
                         {"self_mask_ids": list(b_ids), "key_ids": list(k_ids),
                          "shares": digest(shares_digest(b_ids, m.self_mask_shares).encode(),
                                           shares_digest(k_ids, m.key_shares).encode())})
        ok = self._keep(got, "unmasking", check)
        b_sh: dict[int, dict[int, bytes]] = {u: {} for u in self.u3}
        k_sh: dict[int, dict[int, bytes]] = {v: {} for v in gone}
        for w, m in ok.items():
            for u, s in zip(m.self_mask_ids, m.self_mask_shares):
                b_sh[u][share_x(w)] = s
            for v, s in zip(m.key_ids, m.key_shares):
                k_sh[v][share_x(w)] = s
        holder_of = {share_x(w): w for w in self.participants}

        def robust(shares, t_loc, verify, what):
            try:
                secret, bad = shamir_robust.reconstruct_robust(shares, threshold=t_loc, verify=verify)
            except ValueError as exc:
                raise IntegrityError(f"{what}: shares are inconsistent and cannot be attributed") from exc
            for x in bad:
                self._exclude(holder_of[x], BadShareError(f"{what}: a share off the dealer's polynomial"))
            return secret

        sub, add = [], []
        for u in self.u3:
            if len(b_sh[u]) < self.t_loc[u]:
                raise ThresholdError(f"only {len(b_sh[u])} self-mask shares for site {u} < {self.t_loc[u]}")
            sub.append(robust(b_sh[u], self.t_loc[u],
                              lambda b, u=u: b_commitment(self.full, u, b) == self.b_commit[u],
                              f"self-mask of site {u}"))
        pairwise = []
        for v in sorted(k_sh):
            peers = self.neigh[v] & set(self.u3)
            if not peers:
                continue
            if len(k_sh[v]) < self.t_loc[v]:
                raise ThresholdError(f"only {len(k_sh[v])} mask-key shares for site {v} < {self.t_loc[v]}")

            def key_ok(raw, v=v):
                return x25519.public_bytes(x25519.private_from_bytes(raw)) == self.s_pk[v]
            sk = x25519.private_from_bytes(robust(k_sh[v], self.t_loc[v], key_ok, f"mask key of site {v}"))
            pairwise.append(v)
            for w in sorted(peers):  # w masked with +PRG if w < v, −PRG if w > v: undo it
                seed = hkdf.derive_key(x25519.agree(sk, self.s_pk[w]), label=hkdf.LABEL_PAIRWISE_MASK,
                                       run_id=self.run_id, round_index=self.round_index, a=v, b=w)
                (sub if w < v else add).append(seed)
        total = self._total
        prg.apply_masks(total, add, sub)
        q = self.quantizer
        if q.modulus_bits < 32:
            np.bitwise_and(total, np.uint32(q.modulus_mask), out=total)
        survivors = self.u3
        self._finish(q.dequantize_sum(total, len(survivors)), survivors, pairwise)
        return {}

    def _finish(self, total: np.ndarray, survivors: tuple, pairwise: list) -> None:
        q = self.quantizer
        reconstructed = {"self_mask": list(survivors), "mask_key": list(pairwise)}
        dropped = {s: list(self.dropped[s]) for s in STAGES}
        excluded = {int(k): v for k, v in sorted(self.excluded.items())}
        transcript = {
            "protocol": "pairwise-mask secure aggregation (Bonawitz et al. 2017; SecAgg+ graph, Bell et al. 2020)",
            "protocol_version": VERSION, "mode": self.params.mode, "run_id": self.run_id,
            "round_index": self.round_index, "n": self.n, "threshold": self.t,
            "neighbours": self.degree, "degree": self.degree, "degree_rule": self.degree_rule,
            "setup_hash": self.full.hex(), "setup_hash_before_graph": self.pre.hex(),
            "roster_fingerprint": self.roster.fingerprint,
            "graph_randomness": self.graph_seed.hex(), "graph_participants": list(self.participants),
            "modulus_bits": q.modulus_bits, "levels_per_client": q.levels, "quantization_step": q.step,
            "clip_range": q.clip_range, "sum_error_bound": q.error_bound(len(survivors)), "dimension": self.dim,
            "survivors": list(survivors),
            "dropped": {f"{s}_stage": list(v) for s, v in dropped.items()},  # ledger-safe key names
            "excluded": {"sites": list(excluded), "errors": [excluded[k] for k in excluded]},
            "reconstructed": {"self_mask_reconstructed_for": list(survivors),
                              "pairwise_reconstructed_for": list(pairwise)},
            "identities": "ed25519 (pinned roster)",
        }
        self._result = SecureSumResult(sum=total, survivors=tuple(survivors), dropped=dropped,
                                       reconstructed=reconstructed, threshold=self.t, transcript=transcript,
                                       excluded=excluded)
        self._stage = "done"

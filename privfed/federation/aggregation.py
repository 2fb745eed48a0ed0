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

import hashlib
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
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)   # extra ledger records (kind, payload)


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
        from secure_agg import ServerSession
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
                    conf, arrays[c] = M.wrap_protocol(msg)
                    fields[c] = {"weight_total": wt, **conf}
                replies = exchange("secagg", fields, arrays)
                inner = []
                for c, m in sorted(replies.items()):
                    try:
                        if m.kind != "secagg_reply":
                            raise M.InvalidMessage(f"expected secagg_reply, got {m.kind}")
                        sm = M.unwrap_protocol(m)
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


class KeyHolderChannel:
    """The server's line to the CKKS key holder: signs each request with the server key, moves it through
    ``send`` (an engine's transport) and verifies the reply under the key holder's pinned key."""

    def __init__(self, *, send: Callable[[M.Message], M.Message], server_key, key_holder_key, run_id: str) -> None:
        self.send, self.server_key, self.key_holder_key, self.run_id = send, server_key, key_holder_key, run_id

    def request(self, kind: str, *, round_index: int, fields: Mapping[str, Any] | None = None,
                arrays: Mapping[str, np.ndarray] | None = None) -> M.Message:
        """The verified reply; a refusal (``error``) raises the named error it carries."""
        from secure_agg import errors as E

        msg = M.sign(M.make(kind, run_id=self.run_id, round_index=round_index, sender=M.SERVER,
                            receiver=M.KEY_HOLDER, fields=fields, arrays=arrays), self.server_key)
        reply = self.send(msg)
        if reply.sender != M.KEY_HOLDER:
            raise M.InvalidMessage(f"reply to the key holder's request comes from {reply.sender}")
        M.verify(reply, self.key_holder_key)
        expected = {"he_context": "he_context_reply", "he_decrypt": "he_result"}[kind]
        M.check_header(reply, run_id=self.run_id, round_index=round_index, receiver=M.SERVER,
                       kinds=(expected, "error"))
        if reply.kind == "error":
            err = getattr(E, reply.fields["error"], None)
            err = err if isinstance(err, type) and issubclass(err, E.SecAggError) else E.ProtocolAbort
            raise err(reply.fields["reason"])
        return reply


class CkksAggregator:
    """Homomorphic aggregation (CKKS, TenSEAL): each site encrypts its clipped, weighted update under the key
    holder's public context; the server only adds ciphertexts; the key holder decrypts only the sum of at least
    ``min_clients`` sites and floods it before release. The server never sees a site's update, nor the secret key.
    """

    name = "ckks"

    def __init__(self, cfg, *, run_id: str, roster, key_holder: KeyHolderChannel | None = None) -> None:
        if key_holder is None:
            raise ValueError("CKKS aggregation needs a key holder (a KeyHolderChannel)")
        self.cfg, self.run_id, self.roster, self.kh = cfg, run_id, roster, key_holder
        self._context: M.Message | None = None
        self._public = None

    def _fetch_context(self, round_index: int):
        from secure_agg.he import CkksParams, PublicContext, digest
        from secure_agg.he.statements import CONTEXT_LABEL, context_statement, verify_statement

        if self._context is None:
            m = self.kh.request("he_context", round_index=round_index)
            f = m.fields
            params = CkksParams(poly_modulus_degree=f["poly_modulus_degree"],
                                coeff_mod_bit_sizes=tuple(f["coeff_mod_bit_sizes"]), scale_bits=f["scale_bits"])
            data = np.ascontiguousarray(m.arrays["context"]).tobytes()
            if digest(data) != f["context_sha256"]:
                raise M.InvalidMessage("key holder's public context does not match its digest")
            verify_statement(CONTEXT_LABEL, context_statement(run_id=self.run_id, context_sha256=f["context_sha256"],
                                                              params=params.describe()),
                             f["context_signature"], self.kh.key_holder_key)
            self._context, self._public = m, PublicContext(data, params=params)
        return self._context, self._public

    def aggregate(self, exchange: Exchange, *, round_index: int, participants: Sequence[int],
                  weights: Mapping[int, float], dim: int) -> AggregateResult:
        from secure_agg.errors import (CiphertextError, ForeignContextError, IntegrityError, MalformedCiphertextError,
                                       ProtocolAbort, TooFewContributorsError)
        from secure_agg.he import digest
        from secure_agg.he.statements import DECRYPTION_LABEL, verify_statement

        ctx_msg, public = self._fetch_context(round_index)
        cf = ctx_msg.fields
        wt = float(sum(weights[c] for c in participants))
        request = {"weight_total": wt, "context_sha256": cf["context_sha256"],
                   "context_signature": cf["context_signature"], "poly_modulus_degree": cf["poly_modulus_degree"],
                   "coeff_mod_bit_sizes": list(cf["coeff_mod_bit_sizes"]), "scale_bits": cf["scale_bits"]}
        replies = exchange("ckks", {c: request for c in participants},
                           {c: {"context": ctx_msg.arrays["context"]} for c in participants})
        excluded: dict[int, str] = {}
        released, got, vectors, sizes = [], [], [], {}
        for c, m in sorted(replies.items()):
            if m.kind != "ckks_reply":
                excluded[c] = "InvalidMessage"
                continue
            released.append(c)
            try:
                if m.fields["context_sha256"] != public.sha256:
                    raise ForeignContextError(f"site {c} encrypted under context {m.fields['context_sha256'][:16]}…")
                ct = m.arrays.get("ciphertext")
                if ct is None:
                    raise MalformedCiphertextError(f"site {c} sent no ciphertext")
                vec = public.load(ct, dim=dim)
                if vectors:
                    vectors[0].add_(vec)          # accumulate as the ciphertexts arrive: one sum in memory
                else:
                    vectors.append(vec)
                sizes[str(c)] = int(ct.size)
                got.append(c)
            except CiphertextError as e:
                excluded[c] = type(e).__name__
        need = max(2, int(self.cfg.min_clients))
        transcript: dict[str, Any] = {"mode": "ckks", "params": public.params.describe(),
                                      "key_holder": fingerprint_hex(self.kh.key_holder_key),
                                      "context_sha256": public.sha256, "min_contributors": need,
                                      "ciphertext_bytes": sizes, "dim": dim,
                                      "trust": "server sees ciphertexts and the flooded sum; key holder sees only "
                                               "sums of >= min_contributors sites; server + key holder together "
                                               "see every update"}
        zero = torch.zeros(dim, dtype=torch.float64)
        try:
            if len(got) < need:
                raise TooFewContributorsError(f"{len(got)} valid ciphertext(s) < minimum {need}: nothing is sent "
                                              "for decryption")
            summed = public.add(vectors)
            # each site clips its pre-scaled update to ±clip_range per coordinate: an honest sum stays within
            # n·clip_range; anything outside (a foreign or garbage ciphertext) is never released
            bound = len(got) * float(self.cfg.clip_range) * 1.0001
            res = self.kh.request("he_decrypt", round_index=round_index,
                                  fields={"contributors": list(got), "dim": dim, "bound": bound},
                                  arrays={"ciphertext": np.frombuffer(summed, dtype=np.uint8)})
        except ProtocolAbort as e:
            transcript.update(aborted=f"{type(e).__name__}: {e}", contributors=[])
            return AggregateResult(zero, 0.0, [], released, transcript, excluded)
        rf = res.fields
        total = np.asarray(res.arrays.get("sum", np.zeros(0)), dtype=np.float64)
        statement = {"v": 1, "run": self.run_id, "round": int(round_index), "contributors": rf["contributors"],
                     "min_contributors": rf["min_contributors"], "context_sha256": rf["context_sha256"],
                     "ciphertext_sha256": rf["ciphertext_sha256"], "result_sha256": rf["result_sha256"],
                     "flood_sigma": rf["flood_sigma"], "grid_bits": rf["grid_bits"]}
        try:
            verify_statement(DECRYPTION_LABEL, statement, rf["statement_signature"], self.kh.key_holder_key)
            if (rf["contributors"] != sorted(got) or rf["ciphertext_sha256"] != digest(summed)
                    or rf["context_sha256"] != public.sha256 or total.shape != (dim,)
                    or rf["result_sha256"] != hashlib.sha256(total.astype("<f8").tobytes()).hexdigest()):
                raise IntegrityError("the key holder's signed statement does not match the request or the result")
        except IntegrityError as e:
            transcript.update(aborted=f"{type(e).__name__}: {e}", contributors=[])
            return AggregateResult(zero, 0.0, [], released, transcript, excluded)
        transcript.update(contributors=[str(c) for c in got], flood_sigma=rf["flood_sigma"],
                          grid_bits=rf["grid_bits"], summed_ciphertext_sha256=rf["ciphertext_sha256"])
        record = {"round": int(round_index), "statement": statement,
                  "signature": rf["statement_signature"].hex(),
                  "key_holder_public_key": raw_hex(self.kh.key_holder_key)}
        tw = float(sum(weights[c] for c in got))
        return AggregateResult(torch.from_numpy(total) * wt, tw, list(got), released, transcript, excluded,
                               [("he_decryption", record)])


def raw_hex(key) -> str:
    return key.public_bytes_raw().hex()


def fingerprint_hex(key) -> str:
    return "sha256:" + hashlib.sha256(key.public_bytes_raw()).hexdigest()


def build_aggregator(cfg, *, run_id: str, roster, key_holder: KeyHolderChannel | None = None):
    """The registry: secure-aggregation mode name -> aggregator (server half). CKKS needs the key-holder channel."""
    registry = {"off": PlainAggregator, "secagg": SecureAggregator, "secagg+": SecureAggregator,
                "ckks": CkksAggregator}
    if cfg.mode not in registry:
        raise ValueError(f"unknown aggregation {cfg.mode!r}; choose one of {sorted(registry)}")
    if cfg.mode == "ckks":
        return CkksAggregator(cfg, run_id=run_id, roster=roster, key_holder=key_holder)
    return registry[cfg.mode](cfg, run_id=run_id, roster=roster)


def releases_update(msg: M.Message) -> bool:
    """Whether the site's reply to ``msg`` would carry its update (plain, or masked): the engine's dropout
    simulation withholds exactly these messages from a site planned to drop."""
    if msg.kind in ("upload", "ckks"):
        return True
    if msg.kind != "secagg":
        return False
    from secure_agg.messages import CiphertextBroadcast

    # the reply to the ciphertext broadcast is the site's masked input
    return isinstance(M.unwrap_protocol(msg), CiphertextBroadcast)

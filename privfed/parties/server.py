"""The server role: selects sites, sends signed instructions and the global weights, drives the aggregation
protocol, applies the aggregate and writes the run ledger.

What it receives is only what the sites send back through the engine: offer replies, training summaries (the DP
event, the number of examples; never a training loss), protocol messages
and — only when secure aggregation is off, a round labelled plaintext in the ledger — plaintext updates. It never
imports the site role, the data loaders or the local trainers (an import-linter contract in ``pyproject.toml``
keeps it so).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from privfed.federation.aggregation import AggregateResult
from privfed.federation.privacy import ServerPrivacy
from privfed.federation.seeding import numpy_generator
from privfed.models.unet import trainable_parameters
from privfed.parties import messages as M
from privfed.parties.identity import Roster, fingerprint
from privfed.errors import SiteError
from secure_agg.errors import SecAggError


class Server:
    """The server's half of every round; ``engine.send`` is its only way to reach a site."""

    def __init__(self, *, cfg, run_id: str, config_hash: str, roster: Roster, key: Ed25519PrivateKey, ledger,
                 privacy: ServerPrivacy, aggregator, engine, reporter, model: torch.nn.Module) -> None:
        self.cfg, self.run_id, self.config_hash = cfg, run_id, config_hash
        self.roster, self.key, self.ledger = roster, key, ledger
        self.privacy, self.aggregator, self.engine = privacy, aggregator, engine
        self.reporter, self.model = reporter, model
        self.key_fingerprint = fingerprint(key.public_key())
        self.on_participants: Callable[[int, list[int]], None] = lambda r, ids: None

    # -- messaging ---------------------------------------------------------------------------------------------
    def exchange(self, round_index: int, kind: str, fields: Mapping[int, Mapping[str, Any]],
                 arrays: Mapping[int, Mapping[str, np.ndarray]] | None = None,
                 on_reply: Callable[[int, M.Message], None] | None = None) -> dict[int, M.Message]:
        """Sign and send one message per site; return the verified replies (errors are recorded, not returned)."""
        arrays = arrays or {}
        out = {c: M.sign(M.make(kind, run_id=self.run_id, round_index=round_index, sender=M.SERVER, receiver=c,
                                fields=f, arrays=arrays.get(c, {})), self.key) for c, f in fields.items()}
        good: dict[int, M.Message] = {}

        def accept(c: int, m: M.Message) -> None:
            try:
                if m.sender != c:
                    raise M.InvalidMessage(f"reply to site {c} claims to come from {m.sender}")
                M.verify(m, self.roster.public_key(c))
                M.check_header(m, run_id=self.run_id, round_index=round_index, receiver=M.SERVER, kinds=(m.kind,))
            except (SecAggError, SiteError) as e:
                self._site_event(round_index, c, "excluded", e)
                return
            if m.kind == "error":
                self._site_event(round_index, c, "refused", m.fields["error"], m.fields["reason"])
                return
            good[c] = m
            if on_reply is not None:
                on_reply(c, m)

        self.engine.send(out, on_reply=accept)
        return good

    def _site_event(self, r: int, c: int, event: str, err, reason: str | None = None) -> None:
        name = err if isinstance(err, str) else type(err).__name__
        text = reason if reason is not None else str(err)
        self.ledger.append("site_event", {"round": r, "client": str(c), "event": event, "error": name,
                                          "reason": text})
        self.reporter.note(f"round {r}: site {c} {event} ({name}: {text})")

    # -- selection ---------------------------------------------------------------------------------------------
    def select(self, round_index: int) -> list[int]:
        """Sites of this round: a fixed-size uniform draw, or Poisson (each site independently with probability
        `fraction`) under DP-FedAvg, whose accounting assumes Poisson sampling of sites."""
        n, q = self.cfg.fed.clients, self.cfg.fed.fraction
        if self.cfg.dp.mode == "client":
            if q >= 1:
                return list(range(n))
            # the draw must be secret from whoever could otherwise learn who took part: OS CSPRNG
            return [c for c in range(n) if secrets.randbelow(2**53) < q * 2**53]
        rng = numpy_generator(self.cfg.seed, "select", round_index)
        k = max(1, int(round(q * n)))
        return sorted(rng.choice(n, size=k, replace=False).tolist())

    # -- one round ---------------------------------------------------------------------------------------------
    def round(self, r: int) -> dict[str, Any] | None:
        """One round; None when it had to stop (too few sites may still train: the run then ends cleanly)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        checks, reason = self.privacy.check_round(r)
        for c in checks:
            self.ledger.append("budget_check", c)
        if reason:
            return self._abort(r, reason)
        selected = self.select(r)
        site_level = cfg.dp.mode == "client"
        need = min(cfg.fed.min_clients, cfg.fed.clients)
        accepted: list[int] = []
        if selected:
            offer = {"participants": list(selected), "aggregation": self.aggregator.name, "dp_mode": cfg.dp.mode,
                     "delta": float(self.privacy.delta or 0.0), "config_hash": self.config_hash,
                     "server_key": self.key_fingerprint}
            replies = self.exchange(r, "offer", {c: offer for c in selected})
            for c in selected:
                m = replies.get(c)
                if m is None:
                    continue
                f = m.fields
                if self.privacy.enabled and self.privacy.mode == "sample" and (f["accepted"]
                                                                              or f["error"] == "BudgetExceeded"):
                    self.ledger.append("budget_check", {"round": r, "client": str(c),
                                                        "projected_epsilon": f["projected_epsilon"],
                                                        "max_epsilon": f["max_epsilon"], "allowed": f["accepted"]})
                if f["accepted"]:
                    accepted.append(c)
                else:
                    self._site_event(r, c, "refused", f["error"], f["reason"])
        if site_level and len(accepted) < need:
            # Poisson site sampling drew too few sites: a noise-only round (the draw does not depend on data)
            self.reporter.note(f"round {r}: {len(accepted)} site(s) drawn (< min_clients); noise-only update")
            accepted = []
        elif len(accepted) < need:
            return self._abort(r, f"only {len(accepted)} client(s) may still train in round {r} "
                                  f"(min_clients={cfg.fed.min_clients}); their privacy budgets are spent or they "
                                  "refused the round")
        self.ledger.append("round_start", {"round": r, "selected": [str(c) for c in accepted]})
        self.reporter.round_start(r, accepted)
        vec = parameters_to_vector(self.model.parameters()).detach()       # what the sites load
        chosen = trainable_parameters(self.model, cfg.model.trainable)      # what the update vectors carry
        tvec = parameters_to_vector(chosen).detach()
        trained: dict[int, M.Message] = {}
        if accepted:
            weights = vec.cpu().numpy().astype(np.float32)
            trained = self.exchange(r, "train", {c: {} for c in accepted}, {c: {"weights": weights} for c in accepted},
                                    on_reply=lambda c, m: self.reporter.client_done(r, c, m))
        participants = sorted(trained)
        self.on_participants(r, participants)
        self.privacy.participants(r, participants)
        if participants:
            agg = self.aggregator.aggregate(
                lambda kind, f, a: self.exchange(r, kind, f, a), round_index=r, participants=participants,
                weights={c: trained[c].fields["weight"] for c in participants}, dim=tvec.numel())
        else:
            agg = AggregateResult(torch.zeros(tvec.numel(), dtype=torch.float64), 0.0, [], [],
                                  {"mode": self.aggregator.name, "note": "no participants"})
        if participants:
            self.ledger.append("secure_agg", {"round": r, "transcript": agg.transcript})
        for kind, payload in agg.records:
            self.ledger.append(kind, payload)
        for c, err in sorted(agg.excluded.items()):
            self._site_event(r, c, "excluded", err, "excluded by the aggregation protocol")
        step = self.privacy.post_aggregate(agg.total, agg.total_weight, round_index=r)
        released = {c: _event(trained[c]) for c in agg.released if c in trained}
        payloads = self.privacy.charges(r, released)
        for p in payloads:
            self.ledger.append("dp_event", p)
        self._close(r, participants, payloads)
        with torch.no_grad():
            vector_to_parameters(tvec + cfg.fed.server_lr * step.to(tvec.device), chosen)
        train_time = time.perf_counter() - t0
        contrib = [trained[c] for c in agg.contributors if c in trained]
        # no training loss: the sites' mean loss on their private batches is no accounted release (issue 15); the
        # runner evaluates the model's loss on the declared evaluation split instead (eval_loss)
        record = {
            "round": r, "selected": accepted, "contributors": agg.contributors,
            "examples": int(sum(m.fields["num_examples"] for m in contrib)), "train_seconds": round(train_time, 3),
        }
        record.update(self.privacy.round_summary())
        return record

    def _close(self, r: int, participants: list[int], payloads: list[dict[str, Any]]) -> None:
        """Tell the sites the round is over; under DP-FedAvg every site is told what it was charged."""
        charged = {int(p["client"]): p for p in payloads} if self.privacy.charges_all_sites else {}
        targets = sorted(set(participants) | set(charged))
        fields = {}
        for c in targets:
            p = charged.get(c)
            ev = p["event"] if p else {"type": "none", "noise_multiplier": 0.0, "sample_rate": 0.0, "steps": 0}
            fields[c] = {"charged": p is not None, "contributed": c in participants, "event_type": ev["type"],
                         "noise_multiplier": float(ev["noise_multiplier"]), "sample_rate": float(ev["sample_rate"]),
                         "event_steps": int(ev["steps"]), "epsilon": float(p["epsilon"]) if p else 0.0}
        if fields:
            self.exchange(r, "close", fields)

    def _abort(self, r: int, reason: str) -> None:
        self.ledger.append("abort", {"round": r, "reason": reason})
        self.reporter.note(f"stopping: {reason}")
        return None


def _event(reply: M.Message) -> dict[str, Any] | None:
    f = reply.fields
    if f["event_type"] == "none":
        return None
    return {"type": f["event_type"], "noise_multiplier": f["noise_multiplier"], "sample_rate": f["sample_rate"],
            "steps": f["event_steps"]}

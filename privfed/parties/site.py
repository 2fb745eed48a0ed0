"""The site role: a hospital's half of the federation. It owns its data, its DP trainer and noise, its accountant
and ε cap, its long-term identity key, its pinned policy, its receipt and its half of the secure-aggregation
protocol. It only receives messages and only returns messages; its data and its plaintext update never leave it
(except in a round the server declares plaintext, which its policy may refuse).

State between messages: a site is a long-running object in the in-process engine; its round state (the trained
update and the secure-aggregation session) can be exported sealed with :meth:`Site.seal_state` (AES-256-GCM under
a site-local key, associated data binding run, round, site and stage) for engines that start a fresh process per
message (Flower's ClientApp), so no secret is ever stored in the clear by the transport.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from torch.nn.utils import vector_to_parameters

from audits.receipt import ReceiptWriter, verify_receipt
from dp import BudgetExceeded
from privfed.config import RunConfig
from privfed.data.dataset import ImageDataset
from privfed.errors import PolicyViolation, SealedStateError, SiteError, UnknownSiteError
from privfed.federation.privacy import event_from_payload, event_payload, run_cap
from privfed.federation.site_privacy import site_privacy
from privfed.federation.seeding import derive_seed, torch_generator
from privfed.models import build_scheduler, build_unet, parameter_count
from privfed.parties import messages as M
from privfed.parties.identity import Roster, fingerprint, load_or_init
from privfed.parties.policy import SitePolicy
from secure_agg.errors import SecAggError

STATE_KEY_FILE = "state.key"


class Site:
    """One site. Construct it, then feed it messages with :meth:`handle`."""

    def __init__(self, site_id: int, *, site_dir: str | Path, data: ImageDataset, cfg: RunConfig, run_id: str,
                 delta: float | None, roster: Roster, server_key: Ed25519PublicKey, device: str = "cpu",
                 privacy=None, key_holder_key: Ed25519PublicKey | None = None) -> None:
        self.id = int(site_id)
        self.dir = Path(site_dir)
        self._data = data
        self.cfg = cfg
        self.run_id = run_id
        self.identity = load_or_init(self.dir)
        self.policy = SitePolicy.load(self.dir)
        if self.policy.site_id != self.id:
            raise UnknownSiteError(f"{self.dir}: site.toml names site {self.policy.site_id}, not {self.id}")
        self.roster = roster
        if roster.raw().get(self.id) != self.identity.private_key.public_key().public_bytes_raw():
            raise UnknownSiteError(f"site {self.id}: its identity key is not the roster's key for site {self.id}")
        self.server_key = server_key
        self.key_holder_key = key_holder_key     # CKKS: the only key holder whose public context it encrypts under
        self._he_context = None
        self.privacy = privacy if privacy is not None else site_privacy(
            cfg, len(data), delta=delta, dimension=parameter_count(cfg.model, channels=data.channels,
                                                                   image_size=data.size))
        self.cap = self.policy.cap(run_cap(cfg)) if cfg.dp.mode != "off" else None
        self.device = torch.device(device)
        self.scheduler = build_scheduler(cfg.model)
        self.trainer = self.privacy.trainer(cfg.fed, self.scheduler)
        self._model = None
        self._round: dict[str, Any] = {}
        self._last_round = 0          # the last round this site accepted: an older or equal index is a replay
        self.receipt = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open_receipt(self) -> None:
        """Open (or start) this site's signed receipt and rebuild its accountant from it."""
        path = self.dir / "receipt.jsonl"
        if path.exists():
            # open first (it repairs a torn tail, signed), then rebuild the accountant from the verified records
            self.receipt = ReceiptWriter.open(self.dir, create=False, key=self.identity.private_key)
            verified = verify_receipt(self.dir, public_key=self.identity.public_key, expected_site=str(self.id))
            if verified.run_id != self.run_id:
                raise SiteError(f"{path}: receipt of run {verified.run_id!r}, not {self.run_id!r}")
            for spend in verified.spends:
                self.privacy.accountant.add_event(event_from_payload(spend.event))
            return
        self.receipt = ReceiptWriter.open(self.dir, create=True, key=self.identity.private_key)
        self.receipt.append("receipt_start", {"site": str(self.id), "run_id": self.run_id,
                                              "roster_fingerprint": self.roster.fingerprint,
                                              "public_key": self.identity.private_key.public_key()
                                              .public_bytes_raw().hex(),
                                              "policy": {k: v for k, v in self.policy.__dict__.items()}})

    def close(self) -> None:
        if self.receipt is not None:
            self.receipt.close()
            self.receipt = None

    def epsilon(self) -> float:
        acc = self.privacy.accountant
        return acc.epsilon(delta=self.privacy.delta) if acc.events and self.privacy.delta else 0.0

    # -- messages ----------------------------------------------------------------------------------------------
    def handle(self, msg: M.Message) -> M.Message:
        """Answer one server message; a named refusal comes back as an ``error`` message (never an exception)."""
        try:
            M.verify(msg, self.server_key)
            if msg.sender != M.SERVER or msg.receiver != self.id or msg.run_id != self.run_id:
                raise UnknownSiteError(f"site {self.id}: message for run {msg.run_id!r} site {msg.receiver} "
                                       f"from {msg.sender}")
            handler = {"offer": self._offer, "train": self._train, "upload": self._upload,
                       "secagg": self._secagg, "ckks": self._ckks, "close": self._close}.get(msg.kind)
            if handler is None:
                raise SiteError(f"site {self.id}: unexpected {msg.kind!r} message")
            kind, fields, arrays = handler(msg)
        except (SiteError, SecAggError, BudgetExceeded) as e:
            self._refuse(msg, e)
            kind, fields, arrays = "error", {"error": type(e).__name__, "reason": str(e)}, {}
        reply = M.make(kind, run_id=self.run_id, round_index=msg.round, sender=self.id, receiver=M.SERVER,
                       fields=fields, arrays=arrays)
        return M.sign(reply, self.identity.private_key)

    def _refuse(self, msg: M.Message, err: Exception) -> None:
        if self._round.get("round") == msg.round:
            self._round = {}          # this round is over for the site; a stale message leaves the current one be
        if self.receipt is not None:
            self.receipt.append("refusal", {"round": msg.round, "error": type(err).__name__, "reason": str(err)})

    def _offer(self, msg: M.Message):
        """Check the round's instructions against the pinned policy and the site's own budget; accept or refuse."""
        f = msg.fields
        check = None
        try:
            if msg.round <= self._last_round:
                raise PolicyViolation(f"site {self.id}: round {msg.round} is not after its last round "
                                      f"{self._last_round} (a replayed or reused round index)")
            self._round = {"round": msg.round, "stage": "offer"}
            if f["config_hash"] != self.cfg_hash:
                raise PolicyViolation(f"site {self.id}: the round's configuration hash differs from the one this "
                                      "site agreed to")
            if f["dp_mode"] != self.cfg.dp.mode:
                raise PolicyViolation(f"site {self.id}: round asks for DP mode {f['dp_mode']!r}, the run's is "
                                      f"{self.cfg.dp.mode!r}")
            if self.id not in f["participants"]:
                raise PolicyViolation(f"site {self.id}: offered a round it is not part of")
            self.policy.check_offer(aggregation=f["aggregation"], participants=len(f["participants"]),
                                    delta=f["delta"] if f["delta"] > 0 else None, server_key=f["server_key"])
            check = self.privacy.check_budget(self.cap) if self.cap is not None else None
            if check is not None and not check["allowed"]:
                raise BudgetExceeded(f"site {self.id} refuses round {msg.round}: ε would reach "
                                     f"{check['projected_epsilon']:.2f} > cap {check['max_epsilon']:.2f}",
                                     projected_epsilon=check["projected_epsilon"],
                                     max_epsilon=check["max_epsilon"])
        except (PolicyViolation, BudgetExceeded) as e:
            self._refuse(msg, e)
            return "offer_reply", {"accepted": False, "error": type(e).__name__, "reason": str(e),
                                   "projected_epsilon": float(check["projected_epsilon"]) if check else 0.0,
                                   "max_epsilon": float(check["max_epsilon"]) if check else 0.0}, {}
        self._round.update(participants=list(f["participants"]), aggregation=f["aggregation"])
        self._last_round = msg.round
        return "offer_reply", {"accepted": True, "error": "", "reason": "",
                               "projected_epsilon": float(check["projected_epsilon"]) if check else 0.0,
                               "max_epsilon": float(check["max_epsilon"]) if check else 0.0}, {}

    def _model_from(self, weights: np.ndarray) -> torch.nn.Module:
        if self._model is None:
            with torch.random.fork_rng():        # the global RNG belongs to the server's initialisation
                self._model = build_unet(self.cfg.model, channels=self._data.channels,
                                         image_size=self._data.size).to(self.device)
        w = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(self.device)
        if w.numel() != sum(p.numel() for p in self._model.parameters()):
            raise SiteError(f"site {self.id}: global weights of the wrong size ({w.numel()})")
        with torch.no_grad():
            vector_to_parameters(w, self._model.parameters())
        return self._model

    def _expect(self, msg: M.Message, stage: str) -> None:
        if self._round.get("round") != msg.round or self._round.get("stage") not in (stage,):
            raise SiteError(f"site {self.id}: {msg.kind} message out of order for round {msg.round}")

    def _train(self, msg: M.Message):
        self._expect(msg, "offer")
        model = self._model_from(msg.arrays.get("weights", np.zeros(0, np.float32)))
        upd = self.trainer.train(model, self._data, client_id=self.id, round_index=msg.round,
                                 generator=torch_generator(self.cfg.seed, "client", msg.round, self.id))
        self._round.update(stage="trained", update=upd)
        ev = upd.dp or {"type": "none", "noise_multiplier": 0.0, "sample_rate": 0.0, "steps": 0}
        # no training loss: the mean loss of private batches is no accounted release (it stays at the site)
        return "train_reply", {"num_examples": int(upd.num_examples), "weight": self._update_weight(upd),
                               "steps": int(upd.steps), "event_type": ev["type"],
                               "noise_multiplier": float(ev["noise_multiplier"]),
                               "sample_rate": float(ev["sample_rate"]), "event_steps": int(ev["steps"])}, {}

    def _update_weight(self, upd) -> float:
        """FedAvg weight of this round's update: its own (DP-FedAvg: 1) or the site's example count."""
        return float(upd.weight if upd.weight is not None else self.privacy.weight())

    def _weighted(self, weight_total: float) -> np.ndarray:
        upd = self._round["update"]
        return (upd.delta.double() * (self._update_weight(upd) / weight_total)).numpy()

    def _charge_release(self, round_index: int) -> None:
        """The update leaves the site now: charge its DP event (once per round) in the site's own receipt."""
        if self._round.get("charged"):
            return
        self._round["charged"] = True
        upd = self._round["update"]
        # DP-SGD: the trainer's event; distributed noise: the event of the share added before masking
        event = event_from_payload(upd.dp) if upd.dp is not None else self.privacy.noise_share_event()
        if event is None or self.receipt is None:
            return
        self._record_spend(round_index, event)

    def _record_spend(self, round_index: int, event) -> None:
        """Charge ``event`` to the site's own accountant and sign it into its receipt."""
        eps = self.privacy.charge(event)
        self.receipt.append("dp_spend", {"round": round_index, "unit": self.privacy.unit, "event": event_payload(event),
                                         "delta": self.privacy.delta, "accountant": self.cfg.dp.accountant,
                                         "epsilon": eps})

    def _upload(self, msg: M.Message):
        self._expect(msg, "trained")
        if self.policy.require_secure_aggregation:
            raise PolicyViolation(f"site {self.id}: refuses to upload its update in the clear")
        vec = self._weighted(msg.fields["weight_total"])
        self._charge_release(msg.round)
        self._round["stage"] = "done"
        return "plain_update", {"weight": self._update_weight(self._round["update"])}, {"delta": vec}

    def _secagg(self, msg: M.Message):
        from secure_agg import SiteSession

        if self._round.get("stage") == "trained" and self._round.get("round") == msg.round:
            session = SiteSession(self.id, run_id=self.run_id, round_index=msg.round,
                                  identity=self.identity.private_key, roster=self._sa_roster(),
                                  policy=self._sa_policy(),
                                  rounding_seed=(derive_seed(self.cfg.seed, "quantize", msg.round, self.id)
                                                 .to_bytes(32, "big") if self.cfg.secure_agg.seeded_rounding else None))
            self._round.update(stage="secagg", session=session, weight_total=msg.fields["weight_total"],
                               setup=_setup_summary(M.unwrap_protocol(msg)))
            session.set_input(self._masking_input())
        self._expect(msg, "secagg")
        reply = self._round["session"].handle(M.unwrap_protocol(msg))
        if getattr(reply, "stage", "") == "masked_input":
            self._charge_release(msg.round)
        return ("secagg_reply", *M.wrap_protocol(reply))

    def _ckks(self, msg: M.Message):
        """Encrypt the clipped, weighted update under the key holder's public context (checked first: signed by
        the pinned key holder, no secret key, >= 128-bit parameters). The site can encrypt, never decrypt."""
        from secure_agg.errors import InsecureParametersError
        from secure_agg.he import CkksParams, PublicContext, digest
        from secure_agg.he.statements import CONTEXT_LABEL, context_statement, verify_statement

        self._expect(msg, "trained")
        f = msg.fields
        if self.key_holder_key is None:
            raise PolicyViolation(f"site {self.id}: no key holder pinned; refuses to encrypt under an unknown key")
        try:
            params = CkksParams(poly_modulus_degree=f["poly_modulus_degree"],
                                coeff_mod_bit_sizes=tuple(f["coeff_mod_bit_sizes"]), scale_bits=f["scale_bits"])
        except InsecureParametersError:
            raise
        except (ValueError, TypeError) as e:
            raise PolicyViolation(f"site {self.id}: unusable CKKS parameters ({e})") from None
        data = np.ascontiguousarray(msg.arrays.get("context", np.zeros(0, np.uint8))).tobytes()
        if digest(data) != f["context_sha256"]:
            raise PolicyViolation(f"site {self.id}: the CKKS context does not match its digest")
        verify_statement(CONTEXT_LABEL, context_statement(run_id=self.run_id, context_sha256=f["context_sha256"],
                                                          params=params.describe()),
                         f["context_signature"], self.key_holder_key)
        if self._he_context is None or self._he_context.sha256 != f["context_sha256"]:
            self._he_context = PublicContext(data, params=params)
        clip = float(self.cfg.secure_agg.clip_range)
        vec = np.clip(self.privacy.add_noise_share(self._weighted(f["weight_total"]), weight_total=f["weight_total"]),
                      -clip, clip)
        ct = self._he_context.encrypt(vec)
        self._charge_release(msg.round)
        self._round["stage"] = "done"
        return "ckks_reply", {"context_sha256": self._he_context.sha256}, {"ciphertext": np.frombuffer(ct, np.uint8)}

    def _masking_input(self) -> np.ndarray:
        """The vector this site masks: its weighted update plus (seam for distributed DP) its noise share."""
        wt = self._round["weight_total"]
        return self.privacy.add_noise_share(self._weighted(wt), weight_total=wt,
                                            max_colluders=self.policy.max_colluders, setup=self._round.get("setup"))

    def _sa_roster(self):
        from secure_agg import Roster as SARoster
        return SARoster.from_public_bytes(self.roster.raw())

    def _close(self, msg: M.Message):
        """End of round. Under DP-FedAvg the server's mechanism charges every site: the site records it."""
        f = msg.fields
        if f["charged"] and self.receipt is not None:
            self._record_spend(msg.round, event_from_payload(
                {"type": f["event_type"], "noise_multiplier": f["noise_multiplier"],
                 "sample_rate": f["sample_rate"], "steps": f["event_steps"]}))
        self._round = {}
        return "close_reply", {}, {}

    # -- sealed state (for engines that start a fresh process per message) --------------------------------------
    def _state_key(self) -> bytes:
        path = self.dir / STATE_KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, os.urandom(32))
            finally:
                os.close(fd)
        key = path.read_bytes()
        if len(key) != 32:
            raise SealedStateError(f"{path}: a state key is 32 bytes")
        return key

    def seal_state(self) -> bytes:
        """This round's state, sealed with AES-256-GCM under the site-local key (nothing secret in the clear).

        Layout: 2-byte header length, header JSON (run, site, round, stage; authenticated as associated data),
        12-byte nonce, ciphertext.
        """
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        r = self._round
        header = json.dumps({"v": 1, "run": self.run_id, "site": self.id, "round": r.get("round", -1),
                             "stage": r.get("stage", "")}, sort_keys=True).encode()
        meta = {"charged": bool(r.get("charged")), "participants": r.get("participants", []), "setup": r.get("setup"),
                "aggregation": r.get("aggregation", ""), "weight_total": r.get("weight_total")}
        parts = {"meta": json.dumps(meta).encode()}
        if "update" in r:
            u = r["update"]
            parts["update"] = json.dumps({"num_examples": u.num_examples, "loss": u.loss, "steps": u.steps,
                                          "dp": u.dp, "weight": u.weight}).encode()
            parts["delta"] = u.delta.numpy().astype("<f4").tobytes()
        if "session" in r:
            parts["session"] = r["session"].seal(self._state_key())
        body = b"".join(len(k).to_bytes(2, "big") + k.encode() + len(v).to_bytes(8, "big") + v
                        for k, v in parts.items())
        nonce = os.urandom(12)
        return len(header).to_bytes(2, "big") + header + nonce + AESGCM(self._state_key()).encrypt(nonce, body, header)

    def unseal_state(self, blob: bytes, *, round_index: int) -> None:
        """Restore the state sealed by :meth:`seal_state`; it must be this run's, this site's and this round's."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from privfed.federation.client import ClientUpdate
        from secure_agg import SiteSession

        try:
            hl = int.from_bytes(blob[:2], "big")
            header_bytes = blob[2:2 + hl]
            header = json.loads(header_bytes)
            body = AESGCM(self._state_key()).decrypt(blob[2 + hl:14 + hl], blob[14 + hl:], header_bytes)
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise SealedStateError(f"site {self.id}: sealed state is corrupt or was not sealed by this site") from None
        if header.get("run") != self.run_id or header.get("site") != self.id:
            raise SealedStateError(f"site {self.id}: sealed state belongs to run {header.get('run')!r} site "
                                   f"{header.get('site')!r}")
        if header["round"] not in (round_index, -1):
            raise SealedStateError(f"site {self.id}: sealed state of round {header['round']} offered in round "
                                   f"{round_index}")
        parts, i = {}, 0
        while i < len(body):
            kl = int.from_bytes(body[i:i + 2], "big")
            k = body[i + 2:i + 2 + kl].decode()
            vl = int.from_bytes(body[i + 2 + kl:i + 10 + kl], "big")
            parts[k] = body[i + 10 + kl:i + 10 + kl + vl]
            i += 10 + kl + vl
        r: dict[str, Any] = {} if header["round"] == -1 else {"round": header["round"], "stage": header["stage"]}
        if header["round"] != -1:
            r.update(json.loads(parts["meta"]))
        if "update" in parts:
            u = json.loads(parts["update"])
            delta = torch.from_numpy(np.frombuffer(parts["delta"], dtype="<f4").copy())
            r["update"] = ClientUpdate(client_id=self.id, delta=delta, num_examples=u["num_examples"], loss=u["loss"],
                                       steps=u["steps"], dp=u["dp"], weight=u["weight"])
        if "session" in parts:
            r["session"] = SiteSession.unseal(parts["session"], key=self._state_key(),
                                              identity=self.identity.private_key, roster=self._sa_roster(),
                                              policy=self._sa_policy(), run_id=self.run_id, round_index=round_index)
        self._round = r
        if "session" in r:
            # the protocol session does not seal the plaintext input; it is rebuilt from the sealed update
            r["session"].set_input(self._masking_input())

    def _sa_policy(self):
        from secure_agg import ProtocolPolicy
        pol = self.policy
        return ProtocolPolicy(min_clients=pol.min_clients, min_threshold=pol.min_threshold,
                              max_colluders=pol.max_colluders, min_degree=pol.min_degree or None,
                              failure_log2=pol.failure_log2,
                              max_dropout_fraction=max(0.1, self.cfg.secure_agg.dropout_rate))

    @property
    def cfg_hash(self) -> str:
        import hashlib
        return hashlib.sha256(self.cfg.to_toml().encode()).hexdigest()

    def key_fingerprint(self) -> str:
        return fingerprint(self.identity.public_key)


def _setup_summary(inner) -> dict[str, Any] | None:
    """The secure-aggregation setup's public round parameters (the first stage message), for the noise share: the
    share is sized from what the protocol will actually use, not from the server's separate claims."""
    ids = getattr(inner, "client_ids", None)
    if not ids:
        return None
    return {"n": len(ids), "threshold": int(inner.threshold), "clip_range": float(inner.clip_range),
            "modulus_bits": int(inner.modulus_bits)}

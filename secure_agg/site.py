"""Site stage machine: one :class:`SiteSession` per site per round (Bonawitz et al. 2017, Fig. 4; SecAgg+ graph of
Bell et al. 2020; commit-reveal graph seed; every reply signed under the site's long-term identity key).

``handle(msg)`` takes the server's message for the next stage and returns this site's signed reply; anything wrong
raises a named :class:`~secure_agg.errors.SecAggError` subclass, after which the session refuses every further
message (fail closed). A stage handled twice raises ReplayError; a message for a later stage, StageOrderError.
Secrets (X25519 private keys, self-mask seed, graph nonce, rounding seed, received shares) live in a private state
dict; ``repr`` shows id and stage; pickling is refused; :meth:`seal` encrypts the state for a process hand-over.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_agg import graph, graph_seed, seal as sealing
from secure_agg.errors import (ConsistencyError, DuplicateClientError, IncompleteRevealError, IntegrityError,
                               InvalidMessage, PolicyViolation, ProtocolAbort, ReplayError, SecAggError,
                               SecretDisclosureError, StageOrderError, ThresholdError)
from secure_agg.hazmat import aead, hkdf, prg, shamir, signing, x25519
from secure_agg.messages import (SERVER, SERVER_MESSAGES, STAGE_INDEX, STAGES, VERSION, AdvertiseKeys, Commit,
                                 ConsistencyAck, EncryptedShares, MaskedInput, Reveal, UnmaskShares, check_bytes,
                                 check_bytes_list, check_header, check_ids, check_parallel, digest, full_setup_hash,
                                 is_id, setup_hash, signed_payload)
from secure_agg.policy import ProtocolPolicy
from secure_agg.quantize import make_quantizer, rounding_generator
from secure_agg.roster import Roster

_ID_BYTES = 8
_PLAIN = 2 * _ID_BYTES + 2 * shamir.SHARE_BYTES
_B_COMMIT = b"privfed/secagg/v2/self-mask-commitment|"


def check_threshold(t: int, n: int) -> None:
    """Every party refuses t <= n/2, t < 2 and t > n (ThresholdError)."""
    if isinstance(t, bool) or not isinstance(t, int):
        raise ThresholdError(f"threshold must be an int, got {t!r}")
    if t < 2 or 2 * t <= n or t > n:
        raise ThresholdError(f"unsafe threshold t={t} for n={n}: need n/2 < t <= n and t >= 2")


def b_commitment(full_setup: bytes, site: int, b: bytes) -> bytes:
    """SHA-256 commitment to a site's 256-bit self-mask seed (lets the server verify its reconstruction)."""
    return hashlib.sha256(_B_COMMIT + full_setup + int(site).to_bytes(8, "big") + b).digest()


def share_x(site: int) -> int:
    """Shamir evaluation point of a site: its id + 1 (never 0)."""
    return int(site) + 1


def masked_digest(y: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(y, dtype=np.uint32)).cast("B")).hexdigest()


def shares_digest(ids, shares) -> str:
    return digest(*(int(i).to_bytes(8, "big") + bytes(s) for i, s in zip(ids, shares)))


def identity_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class SiteSession:
    """One site's view of one round. See the module docstring and :mod:`secure_agg.messages` for the stages."""

    def __init__(self, client_id: int, *, run_id: str, round_index: int, identity: Ed25519PrivateKey,
                 roster: Roster, policy: ProtocolPolicy, rounding_seed: bytes | None = None) -> None:
        if not is_id(client_id):
            raise TypeError("client_id must be a non-negative int")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty str")
        if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
            raise ValueError("round_index must be a non-negative int")
        if not isinstance(identity, Ed25519PrivateKey):
            raise TypeError("identity must be an Ed25519PrivateKey (the site's long-term key)")
        if not isinstance(roster, Roster):
            raise TypeError("roster must be a Roster")
        if not isinstance(policy, ProtocolPolicy):
            raise TypeError("policy must be a ProtocolPolicy")
        if roster.public_bytes(int(client_id)) != identity_bytes(identity):
            raise ValueError(f"identity key does not match the roster entry of site {client_id}")
        if rounding_seed is None:
            rounding_seed = os.urandom(32)  # finding 8: each site's own rounding stream, from the OS CSPRNG
        elif not isinstance(rounding_seed, (bytes, bytearray)) or len(rounding_seed) != 32:
            raise ValueError("rounding_seed must be None (OS CSPRNG) or 32 bytes (reproducible experiments only)")
        self.client_id = int(client_id)
        self.run_id = run_id
        self.round_index = round_index
        self._identity = identity
        self._roster = roster
        self._policy = policy
        self._s: dict = {"done": -1, "rounding_seed": bytes(rounding_seed)}
        self._x: np.ndarray | None = None
        self._failed = False
        self._restored = False
        self._derived: dict = {}

    # -- public ----------------------------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        """The stage of the next server message this session expects ("done" after unmasking)."""
        if self._failed:
            return "aborted"
        nxt = self._s["done"] + 1
        return STAGES[nxt] if nxt < len(STAGES) else "done"

    def __repr__(self) -> str:
        return f"SiteSession(id={self.client_id}, run={self.run_id!r}, round={self.round_index}, stage={self.stage!r})"

    def __getstate__(self):
        raise TypeError("SiteSession holds round secrets: use seal(key) to hand it to another process")

    def set_input(self, x: np.ndarray) -> None:
        """This site's float vector (length ``dim`` of the setup), before the masked-input stage."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError("input must be a non-empty 1-D vector")
        if "dim" in self._s and a.shape[0] != self._s["dim"]:
            raise ValueError(f"input must have length {self._s['dim']}")
        if not np.all(np.isfinite(a)):
            raise ValueError("input has NaN/inf")
        self._x = a

    def handle(self, msg):
        """The signed reply to the server's message for the next stage (named SecAggError on anything wrong)."""
        if self._failed:
            raise ProtocolAbort(f"site {self.client_id}: session already aborted this round")
        stage = self.stage
        if stage == "done":
            raise ReplayError(f"site {self.client_id}: round already finished")
        st = getattr(msg, "stage", None)
        ahead = isinstance(st, str) and STAGE_INDEX.get(st, -1) > STAGE_INDEX[stage]
        if self._restored and ahead and getattr(msg, "run_id", None) == self.run_id \
                and getattr(msg, "round_index", None) == self.round_index:
            raise ReplayError(f"site {self.client_id}: the unsealed state is at stage {stage!r}, older than this "
                              f"{msg.stage!r} message (a stale blob was restored)")
        try:
            self._enter(msg, stage)
            reply = getattr(self, "_on_" + stage)(msg)
        except (StageOrderError, ReplayError):
            # a stale or early message reveals nothing and leaves the session usable; a foreign run/round does not
            if getattr(msg, "run_id", None) != self.run_id or getattr(msg, "round_index", None) != self.round_index:
                self._failed = True
            raise
        except SecAggError:
            self._failed = True
            raise
        self._s["done"] = STAGE_INDEX[stage]
        return reply

    def seal(self, key: bytes) -> bytes:
        """AES-256-GCM of this session's state under a site-local 32-byte ``key`` (the input is not included)."""
        if self._failed:
            raise ProtocolAbort("an aborted session cannot be sealed")
        return sealing.seal(self._s, key, run_id=self.run_id, round_index=self.round_index, site=self.client_id,
                            stage=self.stage)

    @classmethod
    def unseal(cls, blob: bytes, *, key: bytes, identity: Ed25519PrivateKey, roster: Roster,
               policy: ProtocolPolicy, run_id: str | None = None, round_index: int | None = None,
               stage: str | None = None) -> "SiteSession":
        """Restore a sealed session. IntegrityError on tampering or a wrong key; ReplayError when the blob belongs
        to another site (by ``identity``), or, when given, another ``run_id``/``round_index``, or an older
        ``stage`` than the one the caller is about to handle. Without those arguments the same errors come from
        :meth:`handle`: a message of another run or round, or of a later stage than the restored state (a stale
        blob), raises ReplayError."""
        header, state = sealing.unseal(blob, key)
        try:
            site, r_id, r_idx, st = int(header["site"]), header["run"], int(header["round"]), header["stage"]
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError("sealed header is malformed") from exc
        if site not in roster or roster.public_bytes(site) != identity_bytes(identity):
            raise ReplayError(f"sealed state of site {site} does not belong to this identity")
        if (run_id is not None and r_id != run_id) or (round_index is not None and r_idx != round_index):
            raise ReplayError(f"sealed state of run {r_id!r} round {r_idx} offered for run {run_id!r} "
                              f"round {round_index}")
        order = {s: i for i, s in enumerate(STAGES + ("done",))}
        if st not in order:
            raise IntegrityError("sealed header has an unknown stage")
        if stage is not None and order.get(stage, -1) > order[st]:
            raise ReplayError(f"sealed state is at stage {st!r}, older than {stage!r}")
        if not isinstance(state.get("done"), int) or order[st] != state["done"] + 1:
            raise IntegrityError("sealed state does not match its header")
        obj = cls(site, run_id=r_id, round_index=r_idx, identity=identity, roster=roster, policy=policy,
                  rounding_seed=state["rounding_seed"])
        obj._s = dict(state)
        obj._restored = True
        return obj

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _enter(self, msg, stage: str) -> None:
        cls = SERVER_MESSAGES[stage]
        if isinstance(msg, type(None)) or not hasattr(msg, "stage"):
            raise InvalidMessage(f"expected {cls.__name__}, got {type(msg).__name__}")
        check_header(msg, cls, run_id=self.run_id, round_index=self.round_index, stage=stage)
        if msg.sender != SERVER:
            raise InvalidMessage("server messages must come from SERVER")

    def _sign(self, stage: str, setup: bytes, body) -> bytes:
        return signing.sign(self._identity, signed_payload(run_id=self.run_id, round_index=self.round_index,
                                                           stage=stage, sender=self.client_id, setup=setup,
                                                           body=body))

    def _verify(self, site: int, sig, stage: str, setup: bytes, body) -> None:
        signing.verify(self._roster.public_key(site), sig,
                       signed_payload(run_id=self.run_id, round_index=self.round_index, stage=stage, sender=site,
                                      setup=setup, body=body))

    def _hdr(self, stage: str) -> tuple:
        return (VERSION, self.run_id, self.round_index, stage, self.client_id)

    def _key(self, label: bytes, secret: bytes, peer: int) -> bytes:
        return hkdf.derive_key(secret, label=label, run_id=self.run_id, round_index=self.round_index,
                               a=self.client_id, b=peer)

    def _ad(self, sender: int, receiver: int) -> bytes:
        return aead.associated_data(version=VERSION, run_id=self.run_id, round_index=self.round_index,
                                    stage="share_keys", sender=sender, receiver=receiver)

    def _d(self, name: str):
        """Derived, non-serialised values (recomputed after unseal)."""
        if name not in self._derived:
            s = self._s
            if name == "quantizer":
                self._derived[name] = make_quantizer(n_clients=len(s["ids"]), clip_range=s["clip_range"],
                                                     modulus_bits=s["modulus_bits"])
            elif name in ("neigh", "holders", "t_loc"):
                parts = s["participants"]
                neigh = graph.neighbours(parts, s["degree"], s["graph_seed"])[self.client_id]
                holders = frozenset(neigh | {self.client_id})
                full = s["degree"] >= len(parts) - 1
                t_loc = s["t"] if full else graph.local_threshold(t=s["t"], n=len(s["ids"]), holders=len(holders))
                self._derived.update(neigh=neigh, holders=holders, t_loc=t_loc)
            elif name in ("c_sk", "s_sk"):
                self._derived[name] = x25519.private_from_bytes(s[name])
        return self._derived[name]

    # -- commit: setup -> graph-randomness commitment --------------------------------------------------------------
    def _on_commit(self, m) -> Commit:
        ids = check_ids(m.client_ids, "client_ids")
        n, u = len(ids), self.client_id
        if u not in ids:
            raise InvalidMessage("this site is not part of the round")
        if m.roster_fingerprint != self._roster.fingerprint:
            raise PolicyViolation("the setup names a roster this site did not pin")
        for i in ids:
            self._roster.public_key(i)   # UnknownIdentityError
        check_threshold(m.threshold, n)
        deg = m.degree
        if isinstance(deg, bool) or not isinstance(deg, int) or not 1 <= deg <= n - 1 or (deg < n - 1 and deg % 2):
            raise InvalidMessage(f"bad neighbour degree {deg!r}")
        self._policy.check(n=n, threshold=m.threshold, degree=deg)   # PolicyViolation
        if isinstance(m.dim, bool) or not isinstance(m.dim, int) or m.dim < 1:
            raise InvalidMessage("bad dimension")
        if not isinstance(m.degree_rule, str) or not isinstance(m.clip_range, float):
            raise InvalidMessage("bad setup field types")
        try:
            q = make_quantizer(n_clients=n, clip_range=m.clip_range, modulus_bits=m.modulus_bits)
        except (ValueError, TypeError) as exc:
            raise InvalidMessage(f"bad quantization parameters: {exc}") from exc
        if q.levels != m.levels:
            raise InvalidMessage("quantization levels would let the sum wrap (or do not match k and n)")
        if self._x is not None and self._x.shape[0] != m.dim:
            raise ValueError(f"input has length {self._x.shape[0]}, the round needs {m.dim}")
        pre = setup_hash(m)
        nonce = os.urandom(graph_seed.NONCE_BYTES)
        c = graph_seed.commitment(pre, u, nonce)
        self._s.update(ids=ids, t=m.threshold, degree=deg, modulus_bits=m.modulus_bits, clip_range=m.clip_range,
                       dim=m.dim, pre=pre, nonce=nonce, commitment=c)
        return Commit(*self._hdr("commit"), commitment=c,
                      signature=self._sign("commit", pre, {"commitment": c.hex()}))

    # -- reveal: commitment list -> nonce ----------------------------------------------------------------------------
    def _on_reveal(self, m) -> Reveal:
        s, u = self._s, self.client_id
        ids = check_parallel(m.ids, m.commitments, m.signatures, what="commitments")
        if not set(ids) <= set(s["ids"]):
            raise InvalidMessage("commitment list names sites outside the setup")
        check_bytes_list(m.commitments, 32, "commitment")
        check_bytes_list(m.signatures, 64, "signature")
        if u not in ids or m.commitments[ids.index(u)] != s["commitment"]:
            raise IntegrityError("the server altered or omitted this site's commitment")
        if len(ids) < s["t"]:
            raise ThresholdError(f"{len(ids)} committed sites < threshold {s['t']}")
        lh = graph_seed.commit_list_hash(s["pre"], ids, m.commitments)
        s.update(commit_ids=ids, commitments=tuple(m.commitments), commit_sigs=tuple(m.signatures), list_hash=lh)
        return Reveal(*self._hdr("reveal"), nonce=s["nonce"],
                      signature=self._sign("reveal", s["pre"], {"commit_list": lh.hex(), "nonce": s["nonce"].hex()}))

    # -- advertise_keys: reveals -> graph seed, two X25519 public keys ---------------------------------------------
    def _on_advertise_keys(self, m) -> AdvertiseKeys:
        s, u = self._s, self.client_id
        rids = check_parallel(m.ids, m.nonces, m.signatures, what="reveals")
        committed = dict(zip(s["commit_ids"], s["commitments"]))
        if not set(rids) <= set(committed):
            raise InvalidMessage("reveal list names sites that did not commit")
        check_bytes_list(m.nonces, graph_seed.NONCE_BYTES, "nonce")
        check_bytes_list(m.signatures, 64, "signature")
        pre = s["pre"]
        for i, r in zip(rids, m.nonces):   # every nonce (not only the neighbours'): a substituted one could be ground
            if graph_seed.commitment(pre, i, r) != committed[i]:
                raise IncompleteRevealError(f"site {i}'s revealed nonce does not open its commitment")
        if u not in rids or m.nonces[rids.index(u)] != s["nonce"]:
            raise IntegrityError("the server altered or omitted this site's nonce")
        sparse = s["degree"] < len(s["commit_ids"]) - 1
        if sparse and rids != s["commit_ids"]:
            raise IncompleteRevealError(f"{len(s['commit_ids']) - len(rids)} committed sites did not reveal: a "
                                        "sparse graph needs every contribution")
        if len(rids) < s["t"]:
            raise ThresholdError(f"{len(rids)} revealed sites < threshold {s['t']}")
        seed = graph_seed.seed(s["list_hash"], rids, m.nonces)
        s.update(participants=rids, graph_seed=seed, full=full_setup_hash(s["pre"], s["list_hash"], rids, seed))
        self._derived.pop("neigh", None)
        # Commit and reveal signatures are checked by the server (which excludes bad ones). A site need not check
        # them again: every neighbour's AdvertiseKeys signature covers the full setup hash, i.e. this exact
        # commitment list, participant set and seed, and its own nonce makes the seed unpredictable to all others.
        c_sk, s_sk = x25519.generate(), x25519.generate()
        s.update(c_sk=x25519.private_bytes(c_sk), s_sk=x25519.private_bytes(s_sk))
        c_pk, s_pk = x25519.public_bytes(c_sk), x25519.public_bytes(s_sk)
        s["own"] = (c_pk, s_pk)
        return AdvertiseKeys(*self._hdr("advertise_keys"), c_pk=c_pk, s_pk=s_pk,
                             signature=self._sign("advertise_keys", s["full"], {"c_pk": c_pk.hex(),
                                                                                "s_pk": s_pk.hex()}))

    # -- share_keys: neighbours' keys -> encrypted Shamir shares ---------------------------------------------------
    def _on_share_keys(self, m) -> EncryptedShares:
        s, u = self._s, self.client_id
        ids = check_parallel(m.ids, m.c_pks, m.s_pks, m.signatures, what="keys")
        holders = self._d("holders")
        keys: dict[int, tuple[bytes, bytes]] = {}
        seen: set[bytes] = set()
        for v, c_pk, s_pk, sig in zip(ids, m.c_pks, m.s_pks, m.signatures):
            if v not in holders:
                raise InvalidMessage(f"keys for {v}, who is not a neighbour")
            check_bytes(c_pk, 32, "c_pk")
            check_bytes(s_pk, 32, "s_pk")
            if v != u:
                self._verify(v, sig, "advertise_keys", s["full"], {"c_pk": c_pk.hex(), "s_pk": s_pk.hex()})
            if c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise DuplicateClientError("the same public key advertised twice")
            seen |= {c_pk, s_pk}
            keys[v] = (c_pk, s_pk)
        if keys.get(u) != tuple(s["own"]):
            raise IntegrityError("the server altered or omitted this site's own public keys")
        t_loc = self._d("t_loc")
        if len(keys) < t_loc:
            raise ThresholdError(f"only {len(keys)} neighbours advertised keys, threshold {t_loc}")
        # both agreements now (each raises LowOrderKeyError on a small-order key, before anything is sent);
        # the derived keys are kept (sealed with the state) so no agreement is computed twice
        c_sk, s_sk = self._d("c_sk"), self._d("s_sk")
        enc_keys, mask_seeds = {}, {}
        for v in sorted(keys):
            if v != u:
                enc_keys[v] = self._key(hkdf.LABEL_SHARE_ENCRYPTION, x25519.agree(c_sk, keys[v][0]), v)
                mask_seeds[v] = self._key(hkdf.LABEL_PAIRWISE_MASK, x25519.agree(s_sk, keys[v][1]), v)
        b = os.urandom(prg.SEED_BYTES)
        xs = [share_x(v) for v in sorted(keys)]
        b_sh = shamir.split(b, threshold=t_loc, xs=xs)
        k_sh = shamir.split(s["s_sk"], threshold=t_loc, xs=xs)
        held = {u: (b_sh[share_x(u)], k_sh[share_x(u)])}
        receivers, cts = [], []
        for v in sorted(enc_keys):
            plain = (u.to_bytes(_ID_BYTES, "big") + v.to_bytes(_ID_BYTES, "big") + b_sh[share_x(v)]
                     + k_sh[share_x(v)])
            receivers.append(v)
            cts.append(aead.encrypt(enc_keys[v], plain, self._ad(u, v)))
        bc = b_commitment(s["full"], u, b)
        s.update(keys=keys, b=b, held=held, enc_keys=enc_keys, mask_seeds=mask_seeds)
        body = {"receivers": receivers, "ciphertexts": digest(*cts), "b_commitment": bc.hex()}
        return EncryptedShares(*self._hdr("share_keys"), receivers=tuple(receivers), ciphertexts=tuple(cts),
                               b_commitment=bc, signature=self._sign("share_keys", s["full"], body))

    # -- masked_input: shares for this site -> masked, quantized input ---------------------------------------------
    def _on_masked_input(self, m) -> MaskedInput:
        s, u = self._s, self.client_id
        if self._x is None:
            raise StageOrderError("set_input(x) must be called before the masked-input stage")
        senders = check_parallel(m.senders, m.ciphertexts, what="ciphertexts")
        enc_keys, held = s["enc_keys"], dict(s["held"])
        for v, blob in zip(senders, m.ciphertexts):
            if v not in enc_keys:
                raise InvalidMessage(f"ciphertext from {v}, who is not a keyed neighbour")
            plain = aead.decrypt(enc_keys[v], blob, self._ad(v, u))
            if len(plain) != _PLAIN or plain[:_ID_BYTES] != v.to_bytes(_ID_BYTES, "big") \
                    or plain[_ID_BYTES:2 * _ID_BYTES] != u.to_bytes(_ID_BYTES, "big"):
                raise IntegrityError("share plaintext names the wrong sender or receiver")
            body = plain[2 * _ID_BYTES:]
            held[v] = (body[:shamir.SHARE_BYTES], body[shamir.SHARE_BYTES:])
        t_loc = self._d("t_loc")
        if len(held) < t_loc:
            raise ThresholdError(f"only {len(held)} share holders left, threshold {t_loc}")
        q = self._d("quantizer")
        add, sub = [s["b"]], []
        for v in sorted(set(held) - {u}):
            (add if u < v else sub).append(s["mask_seeds"][v])
        # quantize and mask in one cache-resident pass: y = Q(x) + PRG(b) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
        y = q.quantize(self._x, rounding_generator(s["rounding_seed"]), chunk_hook=prg.MaskStreams(add, sub).apply)
        if q.modulus_bits < 32:
            np.bitwise_and(y, np.uint32(q.modulus_mask), out=y)
        s.update(held=held, u2=tuple(sorted(held)))
        self._x = None
        return MaskedInput(*self._hdr("masked_input"), masked=y,
                           signature=self._sign("masked_input", s["full"], {"masked": masked_digest(y),
                                                                            "dim": int(y.shape[0])}))

    # -- consistency: survivor list -> signature -------------------------------------------------------------------
    def _on_consistency(self, m) -> ConsistencyAck:
        s, u = self._s, self.client_id
        u3 = check_ids(m.survivors, "survivors")
        holders = self._d("holders")
        if u not in u3:
            raise ConsistencyError("this site is missing from the survivor list")
        if not set(u3) <= set(s["participants"]):
            raise InvalidMessage("survivor list names unknown sites")
        if set(u3) & holders - set(s["u2"]):
            raise ConsistencyError("survivor list names neighbours that never shared keys with this site")
        if len(u3) < s["t"]:
            raise ThresholdError(f"{len(u3)} survivors < threshold {s['t']}")
        if len(set(u3) & holders) < self._d("t_loc"):
            raise ThresholdError("too few surviving neighbours")
        s["u3"] = u3
        return ConsistencyAck(*self._hdr("consistency"),
                              signature=self._sign("consistency", s["full"], {"survivors": list(u3)}))

    # -- unmasking: signed survivor list -> shares -----------------------------------------------------------------
    def _on_unmasking(self, m) -> UnmaskShares:
        s, u = self._s, self.client_id
        survivors = check_ids(m.survivors, "survivors")
        dropped = check_ids(m.dropped, "dropped")
        signers = check_ids(m.signers, "signers")
        sig_ids = check_parallel(m.signer_ids, m.signatures, what="signatures")
        u3, u2, holders = tuple(s["u3"]), set(s["u2"]), self._d("holders")
        if set(survivors) & set(dropped):
            raise SecretDisclosureError("server lists a site as both survivor and dropped: refusing to reveal "
                                        "both its self-mask share and its mask-key share")
        if survivors != u3:
            raise ConsistencyError("survivor list differs from the one signed at the consistency check")
        if not set(dropped) <= (u2 - set(u3)):
            raise SecretDisclosureError("server asks for mask-key shares of sites this site did not see drop")
        if not set(signers) <= set(u3) or u not in signers:
            raise ConsistencyError("consistency signers must be survivors (and include this site)")
        if len(signers) < s["t"]:
            raise ThresholdError(f"{len(signers)} consistency signers < threshold {s['t']}")
        if not set(sig_ids) <= set(signers) & holders:
            raise InvalidMessage("signatures from sites that are not neighbouring signers")
        for v, sig in zip(sig_ids, m.signatures):
            self._verify(v, sig, "consistency", s["full"], {"survivors": list(u3)})
        if len(sig_ids) < self._d("t_loc"):
            raise ThresholdError("too few neighbour consistency signatures")
        held = s["held"]
        b_ids = tuple(v for v in u3 if v in held)
        b_out = tuple(held[v][0] for v in b_ids)
        k_out = tuple(held[v][1] for v in dropped)
        for k in ("held", "enc_keys", "mask_seeds"):
            s[k] = {}
        for k in ("b", "c_sk", "s_sk", "nonce"):   # the round is over for this site: drop its secrets
            s.pop(k, None)
        self._derived.clear()
        body = {"self_mask_ids": list(b_ids), "key_ids": list(dropped),
                "shares": digest(shares_digest(b_ids, b_out).encode(), shares_digest(dropped, k_out).encode())}
        return UnmaskShares(*self._hdr("unmasking"), self_mask_ids=b_ids, self_mask_shares=b_out, key_ids=dropped,
                            key_shares=k_out, signature=self._sign("unmasking", s["full"], body))

"""Client stage machine (Bonawitz et al. 2017, Fig. 4, with the SecAgg+ neighbour graph of Bell et al. 2020).

One object per client per round. Each method takes the server's message for the next stage and returns this client's
reply; calling a stage twice raises ReplayError, skipping ahead raises StageOrderError. Secrets (X25519 private keys,
self-mask seed, received shares) live only in private attributes; ``repr`` shows id and stage, pickling is refused.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from secure_agg import graph
from secure_agg.errors import (ConsistencyError, DuplicateClientError, IntegrityError, InvalidMessage, ReplayError,
                               SecretDisclosureError, StageOrderError, ThresholdError)
from secure_agg.hazmat import aead, hkdf, prg, shamir, signing, x25519
from secure_agg.messages import (SERVER, STAGE_INDEX, VERSION, AdvertiseKeys, CiphertextBroadcast, ConsistencyAck,
                                 ConsistencyRequest, EncryptedShares, KeysBroadcast, MaskedInput, SetupRequest,
                                 UnmaskRequest, UnmaskShares, advertise_payload, check_bytes, check_header, check_ids,
                                 consistency_payload, is_id)
from secure_agg.quantize import make_quantizer


def check_threshold(t: int, n: int) -> None:
    """Every party refuses t <= n/2, t < 2 and t > n (ThresholdError)."""
    if isinstance(t, bool) or not isinstance(t, int):
        raise ThresholdError(f"threshold must be an int, got {t!r}")
    if t < 2 or 2 * t <= n or t > n:
        raise ThresholdError(f"unsafe threshold t={t} for n={n}: need n/2 < t <= n and t >= 2")


_ID_BYTES = 8
_PLAIN = 2 * _ID_BYTES + 2 * shamir.SHARE_BYTES


class SecAggClient:
    """One client's view of one round."""

    def __init__(self, client_id: int, *, run_id: str, round_index: int,
                 identity: signing.Ed25519PrivateKey | None = None,
                 identity_registry: Mapping[int, signing.Ed25519PublicKey] | None = None) -> None:
        if not is_id(client_id):
            raise TypeError("client_id must be a non-negative int")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty str")
        if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
            raise ValueError("round_index must be a non-negative int")
        if (identity is None) != (identity_registry is None):
            raise ValueError("identity and identity_registry go together")
        self.client_id = int(client_id)
        self.run_id = run_id
        self.round_index = round_index
        self._identity = identity
        self._registry = dict(identity_registry) if identity_registry is not None else None
        self._done = -1  # index of the last completed stage

    def __repr__(self) -> str:
        return f"SecAggClient(id={self.client_id}, run={self.run_id!r}, round={self.round_index}, stage={self._done})"

    def __getstate__(self):
        raise TypeError("SecAggClient holds round secrets and cannot be serialised")

    # -- helpers -----------------------------------------------------------------------------------------------
    def _enter(self, msg, cls, stage: str) -> None:
        idx = STAGE_INDEX[stage]
        if idx <= self._done:
            raise ReplayError(f"client {self.client_id}: stage {stage!r} already done")
        if idx != self._done + 1:
            raise StageOrderError(f"client {self.client_id}: stage {stage!r} is out of order")
        check_header(msg, cls, run_id=self.run_id, round_index=self.round_index, stage=stage)
        if msg.sender != SERVER:
            raise InvalidMessage("server messages must come from SERVER")

    def _key(self, label: bytes, secret: bytes, peer: int) -> bytes:
        return hkdf.derive_key(secret, label=label, run_id=self.run_id, round_index=self.round_index,
                               a=self.client_id, b=peer)

    def _ad(self, stage: str, sender: int, receiver: int) -> bytes:
        return aead.associated_data(version=VERSION, run_id=self.run_id, round_index=self.round_index, stage=stage,
                                    sender=sender, receiver=receiver)

    # -- stage 0: setup -> advertise keys ----------------------------------------------------------------------
    def advertise_keys(self, setup: SetupRequest) -> AdvertiseKeys:
        self._enter(setup, SetupRequest, "setup")
        ids = check_ids(setup.client_ids, "client_ids")
        n = len(ids)
        if self.client_id not in ids:
            raise InvalidMessage("this client is not part of the round")
        check_threshold(setup.threshold, n)
        deg = setup.degree
        if isinstance(deg, bool) or not isinstance(deg, int) or not 1 <= deg <= n - 1 or (deg < n - 1 and deg % 2):
            raise InvalidMessage(f"bad neighbour degree {deg!r}")
        if setup.graph_seed != graph.graph_seed(self.run_id, self.round_index):
            raise InvalidMessage("graph seed is not the public round value")
        if isinstance(setup.dim, bool) or not isinstance(setup.dim, int) or setup.dim < 1:
            raise InvalidMessage("bad dimension")
        try:
            q = make_quantizer(n_clients=n, clip_range=setup.clip_range, modulus_bits=setup.modulus_bits)
        except (ValueError, TypeError) as exc:
            raise InvalidMessage(f"bad quantization parameters: {exc}") from exc
        if q.levels != setup.levels:
            raise InvalidMessage("quantization levels would let the sum wrap (or do not match k and n)")
        self._n, self._t, self._ids, self._quantizer, self._dim = n, setup.threshold, ids, q, setup.dim
        self._x = {c: i + 1 for i, c in enumerate(ids)}
        self._neigh = graph.neighbours(list(ids), deg, setup.graph_seed)[self.client_id]
        self._holders = self._neigh | {self.client_id}
        self._t_loc = graph.local_threshold(t=self._t, n=n, holders=len(self._holders))
        self._c_sk, self._s_sk = x25519.generate(), x25519.generate()
        c_pk, s_pk = x25519.public_bytes(self._c_sk), x25519.public_bytes(self._s_sk)
        self._own = (c_pk, s_pk)
        sig = b""
        if self._identity is not None:
            sig = signing.sign(self._identity, advertise_payload(VERSION, self.run_id, self.round_index,
                                                                 self.client_id, c_pk, s_pk))
        self._done = STAGE_INDEX["setup"]
        return AdvertiseKeys(VERSION, self.run_id, self.round_index, "advertise_keys", self.client_id,
                             c_pk=c_pk, s_pk=s_pk, signature=sig)

    # -- stage 1: keys -> encrypted shares ---------------------------------------------------------------------
    def share_keys(self, msg: KeysBroadcast) -> EncryptedShares:
        self._enter(msg, KeysBroadcast, "advertise_keys")
        if not isinstance(msg.keys, Mapping):
            raise InvalidMessage("keys must be a mapping")
        keys: dict[int, tuple[bytes, bytes]] = {}
        seen: set[bytes] = set()
        for v, entry in msg.keys.items():
            if not is_id(v) or int(v) not in self._holders:
                raise InvalidMessage(f"keys for {v!r}, who is not a neighbour")
            if not isinstance(entry, tuple) or len(entry) != 3:
                raise InvalidMessage("key entry must be (c_pk, s_pk, signature)")
            c_pk = check_bytes(entry[0], 32, "c_pk")
            s_pk = check_bytes(entry[1], 32, "s_pk")
            if self._registry is not None:
                if int(v) not in self._registry:
                    raise IntegrityError(f"no identity key for client {v}")
                signing.verify(self._registry[int(v)], entry[2],
                               advertise_payload(VERSION, self.run_id, self.round_index, int(v), c_pk, s_pk))
            if c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise DuplicateClientError("the same public key advertised twice")
            seen |= {c_pk, s_pk}
            keys[int(v)] = (c_pk, s_pk)
        if keys.get(self.client_id) != self._own:
            raise IntegrityError("the server altered or omitted this client's own public keys")
        if len(keys) < self._t_loc:
            raise ThresholdError(f"only {len(keys)} neighbours advertised keys, threshold {self._t_loc}")
        self._keys = keys
        self._b = os.urandom(prg.SEED_BYTES)
        xs = [self._x[v] for v in sorted(keys)]
        b_sh = shamir.split(self._b, threshold=self._t_loc, xs=xs)
        k_sh = shamir.split(x25519.private_bytes(self._s_sk), threshold=self._t_loc, xs=xs)
        u = self.client_id
        self._held = {u: (b_sh[self._x[u]], k_sh[self._x[u]])}  # own shares
        cts = {}
        for v in sorted(keys):
            if v == u:
                continue
            plain = (u.to_bytes(_ID_BYTES, "big") + v.to_bytes(_ID_BYTES, "big")
                     + b_sh[self._x[v]] + k_sh[self._x[v]])
            key = self._key(hkdf.LABEL_SHARE_ENCRYPTION, x25519.agree(self._c_sk, keys[v][0]), v)
            cts[v] = aead.encrypt(key, plain, self._ad("share_keys", u, v))
        self._done = STAGE_INDEX["advertise_keys"]
        return EncryptedShares(VERSION, self.run_id, self.round_index, "share_keys", u, ciphertexts=cts)

    # -- stage 2: ciphertexts -> masked input ------------------------------------------------------------------
    def masked_input(self, msg: CiphertextBroadcast, x: np.ndarray, rng: np.random.Generator) -> MaskedInput:
        self._enter(msg, CiphertextBroadcast, "share_keys")
        x = np.asarray(x)
        if x.ndim != 1 or x.shape[0] != self._dim:
            raise ValueError(f"input must be a 1-D vector of length {self._dim}")
        if not isinstance(msg.ciphertexts, Mapping):
            raise InvalidMessage("ciphertexts must be a mapping")
        u = self.client_id
        for v, blob in msg.ciphertexts.items():
            if not is_id(v) or int(v) == u or int(v) not in self._keys:
                raise InvalidMessage(f"ciphertext from {v!r}, who is not a keyed neighbour")
            key = self._key(hkdf.LABEL_SHARE_ENCRYPTION, x25519.agree(self._c_sk, self._keys[int(v)][0]), int(v))
            plain = aead.decrypt(key, blob, self._ad("share_keys", int(v), u))
            if len(plain) != _PLAIN or plain[:_ID_BYTES] != int(v).to_bytes(_ID_BYTES, "big") \
                    or plain[_ID_BYTES:2 * _ID_BYTES] != u.to_bytes(_ID_BYTES, "big"):
                raise IntegrityError("share plaintext names the wrong sender or receiver")
            body = plain[2 * _ID_BYTES:]
            self._held[int(v)] = (body[:shamir.SHARE_BYTES], body[shamir.SHARE_BYTES:])
        if len(self._held) < self._t_loc:
            raise ThresholdError(f"only {len(self._held)} share holders left, threshold {self._t_loc}")
        self._u2 = frozenset(self._held)
        y = self._quantizer.quantize(x, rng)
        add, sub = [self._b], []
        for v in sorted(self._u2 - {u}):
            seed = self._key(hkdf.LABEL_PAIRWISE_MASK, x25519.agree(self._s_sk, self._keys[v][1]), v)
            (add if u < v else sub).append(seed)
        prg.apply_masks(y, add, sub)
        np.bitwise_and(y, np.uint32(self._quantizer.modulus_mask), out=y)
        self._done = STAGE_INDEX["share_keys"]
        return MaskedInput(VERSION, self.run_id, self.round_index, "masked_input", u, masked=y)

    # -- stage 3: survivor list -> consistency signature -------------------------------------------------------
    def consistency(self, msg: ConsistencyRequest) -> ConsistencyAck:
        self._enter(msg, ConsistencyRequest, "masked_input")
        u3 = check_ids(msg.survivors, "survivors")
        u = self.client_id
        if u not in u3:
            raise ConsistencyError("this client is missing from the survivor list")
        if not set(u3) <= set(self._ids):
            raise InvalidMessage("survivor list names unknown clients")
        if set(u3) & self._holders - self._u2:
            raise ConsistencyError("survivor list names neighbours that never shared keys with this client")
        if len(u3) < self._t:
            raise ThresholdError(f"{len(u3)} survivors < threshold {self._t}")
        if len(set(u3) & self._holders) < self._t_loc:
            raise ThresholdError("too few surviving neighbours")
        self._u3 = u3
        sig = b""
        if self._identity is not None:
            sig = signing.sign(self._identity, consistency_payload(VERSION, self.run_id, self.round_index, u3))
        self._done = STAGE_INDEX["masked_input"]
        return ConsistencyAck(VERSION, self.run_id, self.round_index, "consistency", u, signature=sig)

    # -- stage 4: unmask request -> shares ---------------------------------------------------------------------
    def unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        self._enter(msg, UnmaskRequest, "consistency")
        survivors = check_ids(msg.survivors, "survivors")
        dropped = check_ids(msg.dropped, "dropped")
        signers = check_ids(msg.signers, "signers")
        if set(survivors) & set(dropped):
            raise SecretDisclosureError("server lists a client as both survivor and dropped: refusing to reveal "
                                        "both its self-mask share and its mask-key share")
        if survivors != self._u3:
            raise ConsistencyError("survivor list differs from the one signed at the consistency check")
        if not set(dropped) <= (self._u2 - set(self._u3)):
            raise SecretDisclosureError("server asks for mask-key shares of clients this client did not see drop")
        if not set(signers) <= set(self._u3) or self.client_id not in signers:
            raise ConsistencyError("consistency signers must be survivors (and include this client)")
        if len(signers) < self._t:
            raise ThresholdError(f"{len(signers)} consistency signers < threshold {self._t}")
        if self._registry is not None:
            payload = consistency_payload(VERSION, self.run_id, self.round_index, self._u3)
            checked = 0
            for v in signers:
                if v in self._holders:
                    if v not in self._registry or not isinstance(msg.signatures, dict):
                        raise IntegrityError(f"no identity key or signature for client {v}")
                    signing.verify(self._registry[v], msg.signatures.get(v, b""), payload)
                    checked += 1
            if checked < self._t_loc:
                raise ThresholdError("too few neighbour consistency signatures")
        b_out = {v: self._held[v][0] for v in self._u3 if v in self._held}
        k_out = {v: self._held[v][1] for v in dropped}
        self._done = STAGE_INDEX["consistency"]
        self._held = {}
        return UnmaskShares(VERSION, self.run_id, self.round_index, "unmasking", self.client_id,
                            self_mask_shares=b_out, key_shares=k_out)

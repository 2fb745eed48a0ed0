"""Versioned protocol messages, the setup hash, and the signed payloads (DESIGN §3.8).

Every message carries (version, run_id, round_index, stage, sender). A server message carries the stage of the
reply it asks for; a site's reply carries the same stage. Stages, in order (server message -> site reply):

  commit          Setup               -> Commit         (graph-randomness commitment)
  reveal          CommitList          -> Reveal         (graph-randomness nonce)
  advertise_keys  RevealList          -> AdvertiseKeys  (two X25519 public keys)
  share_keys      KeysBroadcast       -> EncryptedShares (AES-GCM Shamir shares + commitment to the self-mask seed)
  masked_input    CiphertextBroadcast -> MaskedInput    (uint32 vector in Z_2^k)
  consistency     ConsistencyRequest  -> ConsistencyAck (signature over the survivor list)
  unmasking       UnmaskRequest       -> UnmaskShares   (self-mask shares of survivors, key shares of dropouts)

Every site message is Ed25519-signed under the site's long-term identity key over canonical JSON of (version,
run, round, stage, sender, setup hash, a digest of the body): the commit and reveal stages bind the setup hash
before the graph seed exists; from advertise_keys on, the *full* setup hash (which includes the graph seed and
the participants). Id -> value mappings travel as parallel tuples (Flower's ConfigRecord has no int-keyed dicts).
Receivers check a header in this order: wrong type/version -> InvalidMessage; other run or round -> ReplayError;
an earlier stage -> ReplayError (stale); a later stage -> StageOrderError; bad sender -> InvalidMessage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_agg.canonical import canonical
from secure_agg.errors import DuplicateClientError, InvalidMessage, ReplayError, StageOrderError

VERSION = 2
SERVER = -1
STAGES = ("commit", "reveal", "advertise_keys", "share_keys", "masked_input", "consistency", "unmasking")
STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


def is_id(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and int(x) >= 0


@dataclass(frozen=True)
class Header:
    version: int
    run_id: str
    round_index: int
    stage: str
    sender: int


@dataclass(frozen=True)
class Setup(Header):
    client_ids: tuple = ()
    threshold: int = 0
    degree: int = 0
    modulus_bits: int = 0
    levels: int = 0
    clip_range: float = 0.0
    dim: int = 0
    roster_fingerprint: str = ""
    degree_rule: str = ""


@dataclass(frozen=True)
class Commit(Header):
    commitment: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class CommitList(Header):
    ids: tuple = ()
    commitments: tuple = ()
    signatures: tuple = ()


@dataclass(frozen=True)
class Reveal(Header):
    nonce: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class RevealList(Header):
    ids: tuple = ()
    nonces: tuple = ()
    signatures: tuple = ()


@dataclass(frozen=True)
class AdvertiseKeys(Header):
    c_pk: bytes = b""   # share-encryption public key
    s_pk: bytes = b""   # mask-agreement public key
    signature: bytes = b""


@dataclass(frozen=True)
class KeysBroadcast(Header):
    ids: tuple = ()
    c_pks: tuple = ()
    s_pks: tuple = ()
    signatures: tuple = ()


@dataclass(frozen=True)
class EncryptedShares(Header):
    receivers: tuple = ()
    ciphertexts: tuple = ()
    b_commitment: bytes = b""  # SHA-256 commitment to the self-mask seed (checked after reconstruction)
    signature: bytes = b""


@dataclass(frozen=True)
class CiphertextBroadcast(Header):
    senders: tuple = ()
    ciphertexts: tuple = ()     # from sender, addressed to the receiver (AES-GCM under the pairwise key)


@dataclass(frozen=True)
class MaskedInput(Header):
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32), repr=False)
    signature: bytes = b""


@dataclass(frozen=True)
class ConsistencyRequest(Header):
    survivors: tuple = ()


@dataclass(frozen=True)
class ConsistencyAck(Header):
    signature: bytes = b""


@dataclass(frozen=True)
class UnmaskRequest(Header):
    survivors: tuple = ()
    dropped: tuple = ()
    signers: tuple = ()
    signer_ids: tuple = ()       # whose consistency signatures follow (the receiver's neighbours among signers)
    signatures: tuple = ()


@dataclass(frozen=True)
class UnmaskShares(Header):
    self_mask_ids: tuple = ()
    self_mask_shares: tuple = field(default=(), repr=False)
    key_ids: tuple = ()
    key_shares: tuple = field(default=(), repr=False)
    signature: bytes = b""


SERVER_MESSAGES = {"commit": Setup, "reveal": CommitList, "advertise_keys": RevealList,
                   "share_keys": KeysBroadcast, "masked_input": CiphertextBroadcast,
                   "consistency": ConsistencyRequest, "unmasking": UnmaskRequest}
SITE_MESSAGES = {"commit": Commit, "reveal": Reveal, "advertise_keys": AdvertiseKeys,
                 "share_keys": EncryptedShares, "masked_input": MaskedInput, "consistency": ConsistencyAck,
                 "unmasking": UnmaskShares}
ALL_MESSAGES = {c.__name__: c for c in list(SERVER_MESSAGES.values()) + list(SITE_MESSAGES.values())}


def setup_hash(s: Setup) -> bytes:
    """SHA-256 over canonical JSON of everything the setup fixes before the graph seed exists."""
    return hashlib.sha256(b"privfed/secagg/v2/setup|" + canonical({
        "v": s.version, "run": s.run_id, "round": s.round_index, "roster": s.roster_fingerprint,
        "ids": [int(i) for i in s.client_ids], "t": s.threshold, "degree": s.degree, "degree_rule": s.degree_rule,
        "modulus_bits": s.modulus_bits, "levels": s.levels, "clip_range": float(s.clip_range), "dim": s.dim,
    })).digest()


def full_setup_hash(pre: bytes, list_hash: bytes, participants, graph_seed: bytes) -> bytes:
    """The setup hash every later signature binds: the setup, the commitment list, the participants, the seed."""
    return hashlib.sha256(b"privfed/secagg/v2/setup-full|" + canonical({
        "setup": pre.hex(), "commit_list": list_hash.hex(), "participants": [int(i) for i in participants],
        "graph_seed": graph_seed.hex()})).digest()


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def signed_payload(*, run_id: str, round_index: int, stage: str, sender: int, setup: bytes, body: Any) -> bytes:
    """What a site signs at one stage (canonical JSON; ``body`` holds hex digests, never secrets)."""
    return canonical({"v": VERSION, "proto": "privfed/secagg", "run": run_id, "round": int(round_index),
                      "stage": stage, "from": int(sender), "setup": setup.hex(), "body": body})


def check_header(msg: Any, cls: type, *, run_id: str, round_index: int, stage: str) -> None:
    """Type, version, run/round binding and stage order of one message."""
    if not isinstance(msg, Header):
        raise InvalidMessage(f"expected {cls.__name__}, got {type(msg).__name__}")
    if msg.version != VERSION:
        raise InvalidMessage(f"unsupported protocol version {msg.version!r}")
    if msg.run_id != run_id or msg.round_index != round_index:
        raise ReplayError(f"message from run {msg.run_id!r} round {msg.round_index!r} replayed into "
                          f"run {run_id!r} round {round_index!r}")
    if msg.stage not in STAGE_INDEX:
        raise InvalidMessage(f"unknown stage {msg.stage!r}")
    if STAGE_INDEX[msg.stage] < STAGE_INDEX[stage]:
        raise ReplayError(f"stale {msg.stage!r} message during stage {stage!r}")
    if STAGE_INDEX[msg.stage] > STAGE_INDEX[stage]:
        raise StageOrderError(f"{msg.stage!r} message during stage {stage!r}")
    if type(msg) is not cls:
        raise InvalidMessage(f"expected {cls.__name__}, got {type(msg).__name__}")
    if not is_id(msg.sender) and msg.sender != SERVER:
        raise InvalidMessage(f"bad sender id {msg.sender!r}")


def check_bytes(value: Any, length: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise InvalidMessage(f"{what} must be {length} bytes")
    return value


def check_bytes_list(values: Any, length: int | None, what: str) -> None:
    """Every element is ``bytes`` (of ``length`` bytes when given)."""
    if length is None:
        ok = all(type(v) is bytes for v in values)
    else:
        ok = all(type(v) is bytes and len(v) == length for v in values)
    if not ok:
        raise InvalidMessage(f"every {what} must be {'' if length is None else f'{length} '}bytes")


def check_ids(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise InvalidMessage(f"{what} must be a sequence of non-negative int ids")
    if all(type(v) is int for v in values):          # fast path (plain ints)
        ids = tuple(values)
        if ids and min(ids) < 0:
            raise InvalidMessage(f"{what} must be a sequence of non-negative int ids")
    elif all(is_id(v) for v in values):
        ids = tuple(int(v) for v in values)
    else:
        raise InvalidMessage(f"{what} must be a sequence of non-negative int ids")
    if len(set(ids)) != len(ids):
        raise DuplicateClientError(f"duplicate id in {what}")
    if list(ids) != sorted(ids):
        raise InvalidMessage(f"{what} must be sorted")
    return ids


def check_parallel(ids: Any, *columns: Any, what: str) -> tuple[int, ...]:
    """Sorted distinct ids and equally long tuples of values (one id -> value mapping as parallel lists)."""
    out = check_ids(ids, what)
    for col in columns:
        if not isinstance(col, (tuple, list)) or len(col) != len(out):
            raise InvalidMessage(f"{what}: columns must be sequences as long as the ids")
    return out

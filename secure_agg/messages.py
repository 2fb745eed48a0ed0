"""Versioned protocol messages and their validation.

Every message carries (version, run_id, round_index, stage, sender). Receivers check them in this order, raising:
wrong type/version/shape -> InvalidMessage; other run or round -> ReplayError; an earlier stage -> ReplayError
(stale message); a later stage -> StageOrderError; an unexpected sender -> InvalidMessage; the same sender twice
in one stage -> DuplicateClientError. Shares inside :class:`UnmaskShares` are excluded from ``repr``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from secure_agg.errors import DuplicateClientError, InvalidMessage, ReplayError, StageOrderError

VERSION = 1
SERVER = -1
STAGES = ("setup", "advertise_keys", "share_keys", "masked_input", "consistency", "unmasking")
STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (what signatures cover)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


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
class SetupRequest(Header):
    client_ids: tuple[int, ...] = ()
    threshold: int = 0
    degree: int = 0
    modulus_bits: int = 0
    levels: int = 0
    clip_range: float = 0.0
    dim: int = 0
    graph_seed: bytes = b""


@dataclass(frozen=True)
class AdvertiseKeys(Header):
    c_pk: bytes = b""   # share-encryption public key
    s_pk: bytes = b""   # mask-agreement public key
    signature: bytes = b""  # Ed25519 over (version, run, round, stage, sender, c_pk, s_pk), or b""


@dataclass(frozen=True)
class KeysBroadcast(Header):
    keys: Mapping[int, tuple[bytes, bytes, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class EncryptedShares(Header):
    ciphertexts: Mapping[int, bytes] = field(default_factory=dict)  # receiver -> AES-GCM blob


@dataclass(frozen=True)
class CiphertextBroadcast(Header):
    ciphertexts: Mapping[int, bytes] = field(default_factory=dict)  # sender -> blob addressed to the receiver


@dataclass(frozen=True)
class MaskedInput(Header):
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32), repr=False)


@dataclass(frozen=True)
class ConsistencyRequest(Header):
    survivors: tuple[int, ...] = ()


@dataclass(frozen=True)
class ConsistencyAck(Header):
    signature: bytes = b""  # Ed25519 over (version, run, round, "consistency", survivors), or b""


@dataclass(frozen=True)
class UnmaskRequest(Header):
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    signers: tuple[int, ...] = ()
    signatures: Mapping[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class UnmaskShares(Header):
    self_mask_shares: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    key_shares: Mapping[int, bytes] = field(default_factory=dict, repr=False)


def advertise_payload(version: int, run_id: str, round_index: int, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return canonical({"v": version, "run": run_id, "round": round_index, "stage": "advertise_keys",
                      "from": sender, "c_pk": c_pk.hex(), "s_pk": s_pk.hex()})


def consistency_payload(version: int, run_id: str, round_index: int, survivors: Iterable[int]) -> bytes:
    return canonical({"v": version, "run": run_id, "round": round_index, "stage": "consistency",
                      "survivors": sorted(int(s) for s in survivors)})


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


def collect(msgs: Iterable[Any], cls: type, *, run_id: str, round_index: int, stage: str,
            allowed: set[int]) -> dict[int, Any]:
    """Validate a batch of client messages for one stage; sender -> message."""
    out: dict[int, Any] = {}
    for m in msgs:
        check_header(m, cls, run_id=run_id, round_index=round_index, stage=stage)
        if m.sender not in allowed:
            raise InvalidMessage(f"client {m.sender!r} may not send at stage {stage!r}")
        if m.sender in out:
            raise DuplicateClientError(f"client {m.sender} sent twice at stage {stage!r}")
        out[int(m.sender)] = m
    return out


def check_bytes(value: Any, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidMessage(f"{what} must be {length} bytes")
    return value


def check_ids(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(is_id(v) for v in values):
        raise InvalidMessage(f"{what} must be a sequence of non-negative int ids")
    ids = tuple(int(v) for v in values)
    if len(set(ids)) != len(ids):
        raise DuplicateClientError(f"duplicate id in {what}")
    if list(ids) != sorted(ids):
        raise InvalidMessage(f"{what} must be sorted")
    return ids

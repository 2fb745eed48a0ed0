"""Versioned messages between the server and the sites, with a strict codec and Ed25519 signatures.

A message is a header (version, kind, run, round, sender, receiver), typed scalar fields and named numpy arrays.
:func:`encode` turns it into ``(config, arrays)``: a flat map of scalars / lists of one scalar type and a map of
arrays — exactly what Flower's ``RecordDict`` holds (a ``ConfigRecord`` and an ``ArrayRecord``), so the Flower
engine can carry these messages unchanged. :func:`decode` accepts only the fields of the message's kind with their
exact types (``InvalidMessage`` otherwise). Secure-aggregation stage messages travel inside a ``secagg`` message,
encoded by :mod:`secure_agg.codec` under the ``sa.`` prefix.

Every message is signed by its sender (the server with its ledger key, a site with its long-term identity key)
over the canonical JSON of the header, the fields and the SHA-256 of every array; :func:`verify` checks it against
a pinned key, so a message from a key that is not on the roster, or one moved to another run, round or receiver,
is rejected with a named error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import IntegrityError, InvalidMessage

VERSION = 1
SERVER = -1
KEY_HOLDER = -2          # the CKKS key holder (privfed.parties.key_holder)
ANY_SITE = -3            # a hello to a transport node whose site is not known yet (Flower engine)
SIGNING_CONTEXT = b"privfed-message/v1\n"
SA_PREFIX = "sa."

# kind -> {field: type}; a type is int, float, str, bool, bytes or ("list", scalar type)
_ERR = {"error": str, "reason": str}
KINDS: dict[str, dict[str, Any]] = {
    # server -> a transport node (Flower): which site are you? The reply is signed by the site's identity key over
    # the server's fresh nonce, so a node can only answer for a site whose key it holds (checked on the roster)
    "hello": {"nonce": bytes},
    "hello_reply": {"nonce": bytes, "key_fingerprint": str},
    # server -> site: the round's instructions (the site checks them against its pinned policy)
    "offer": {"participants": ("list", int), "aggregation": str, "dp_mode": str, "delta": float,
              "config_hash": str, "server_key": str},
    "offer_reply": {"accepted": bool, "projected_epsilon": float, "max_epsilon": float, **_ERR},
    # server -> site: global weights; the site trains and keeps its update (it never leaves in the clear
    # unless the round is a plaintext one)
    "train": {},
    "train_reply": {"num_examples": int, "weight": float, "steps": int, "event_type": str,
                    "noise_multiplier": float, "sample_rate": float, "event_steps": int},
    # plaintext aggregation (secure aggregation off): labelled as such in the ledger and the report
    "upload": {"weight_total": float},
    "plain_update": {"weight": float},
    # one secure-aggregation stage (the secure_agg message rides under the "sa." prefix)
    "secagg": {"weight_total": float},
    "secagg_reply": {},
    # CKKS aggregation: the key holder's public context (with its signed statement) to every site; each site
    # returns its encrypted weighted update (arrays: "context" / "ciphertext", uint8)
    "ckks": {"weight_total": float, "context_sha256": str, "context_signature": bytes, "poly_modulus_degree": int,
             "coeff_mod_bit_sizes": ("list", int), "scale_bits": int},
    "ckks_reply": {"context_sha256": str},
    # server <-> key holder: fetch the public context; decrypt one summed ciphertext of >= min sites
    "he_context": {},
    "he_context_reply": {"context_sha256": str, "context_signature": bytes, "poly_modulus_degree": int,
                         "coeff_mod_bit_sizes": ("list", int), "scale_bits": int, "security_bits": int},
    "he_decrypt": {"contributors": ("list", int), "dim": int, "bound": float},
    "he_result": {"contributors": ("list", int), "min_contributors": int, "context_sha256": str,
                  "ciphertext_sha256": str, "result_sha256": str, "flood_sigma": float, "grid_bits": int,
                  "statement_signature": bytes},
    # server -> every site: the round's outcome and, under DP-FedAvg, the event each site is charged
    "close": {"charged": bool, "contributed": bool, "event_type": str, "noise_multiplier": float,
              "sample_rate": float, "event_steps": int, "epsilon": float},
    "close_reply": {},
    # site -> server: a named refusal or failure (the round goes on without this site)
    "error": _ERR,
}
_SCALARS = (int, float, str, bool, bytes)


@dataclass(frozen=True)
class Message:
    kind: str
    run_id: str
    round: int
    sender: int
    receiver: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    signature: bytes = field(default=b"", repr=False)


def _check_value(name: str, value: Any, typ: Any) -> None:
    if isinstance(typ, tuple):
        if not isinstance(value, list) or not all(_is(v, typ[1]) for v in value):
            raise InvalidMessage(f"field {name!r} must be a list of {typ[1].__name__}")
    elif not _is(value, typ):
        raise InvalidMessage(f"field {name!r} must be {typ.__name__}, got {type(value).__name__}")


def _is(value: Any, typ: type) -> bool:
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, float)
    return isinstance(value, typ)


def _check_fields(kind: str, fields: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    if kind not in KINDS:
        raise InvalidMessage(f"unknown message kind {kind!r}")
    schema = KINDS[kind]
    own = {k for k in fields if not k.startswith(SA_PREFIX)}
    if own != set(schema):
        raise InvalidMessage(f"{kind} message fields {sorted(own)} != {sorted(schema)}")
    if kind not in ("secagg", "secagg_reply") and any(k.startswith(SA_PREFIX) for k in list(fields) + list(arrays)):
        raise InvalidMessage(f"{kind} message carries secure-aggregation fields")
    for k in own:
        _check_value(k, fields[k], schema[k])
    for k, v in fields.items():
        if k.startswith(SA_PREFIX) and not (isinstance(v, _SCALARS) or (isinstance(v, list) and
                                                                         all(isinstance(x, _SCALARS) for x in v))):
            raise InvalidMessage(f"field {k!r} is not a scalar or a list of scalars")
    for k, a in arrays.items():
        if not isinstance(k, str) or not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub" \
                or a.dtype.byteorder not in ("=", "|", "<"):
            raise InvalidMessage(f"array {k!r} must be a little-endian numeric numpy array")


def make(kind: str, *, run_id: str, round_index: int, sender: int, receiver: int,
         fields: Mapping[str, Any] | None = None, arrays: Mapping[str, np.ndarray] | None = None) -> Message:
    """Build and validate an (unsigned) message."""
    fields, arrays = dict(fields or {}), dict(arrays or {})
    _check_fields(kind, fields, arrays)
    return Message(kind, run_id, int(round_index), int(sender), int(receiver), fields, arrays)


def wrap_protocol(msg) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A ``secure_agg`` stage message as (fields, arrays) under the ``sa.`` prefix of a secagg message."""
    from secure_agg import codec

    conf, arr = codec.encode(msg)
    return {SA_PREFIX + k: v for k, v in conf.items()}, {SA_PREFIX + k: v for k, v in arr.items()}


def unwrap_protocol(m: Message):
    """The ``secure_agg`` stage message carried by a secagg message (InvalidMessage if malformed)."""
    from secure_agg import codec

    conf = {k[len(SA_PREFIX):]: v for k, v in m.fields.items() if k.startswith(SA_PREFIX)}
    arr = {k[len(SA_PREFIX):]: v for k, v in m.arrays.items() if k.startswith(SA_PREFIX)}
    return codec.decode(conf, arr)


def _signed_bytes(m: Message) -> bytes:
    body = {"v": VERSION, "kind": m.kind, "run": m.run_id, "round": m.round, "from": m.sender, "to": m.receiver,
            "fields": {k: (v.hex() if isinstance(v, bytes) else
                           [x.hex() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v)
                       for k, v in m.fields.items()},
            "arrays": {k: [str(a.dtype), list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
                       for k, a in m.arrays.items()}}
    return SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(m: Message, key: Ed25519PrivateKey) -> Message:
    return replace(m, signature=key.sign(_signed_bytes(m)))


def verify(m: Message, key: Ed25519PublicKey) -> None:
    """Raise IntegrityError unless ``m`` carries a valid signature under ``key``."""
    try:
        key.verify(m.signature, _signed_bytes(m))
    except InvalidSignature:
        raise IntegrityError(f"{m.kind} message from {m.sender}: signature does not verify under the pinned "
                             "key") from None


def check_header(m: Message, *, run_id: str, round_index: int, receiver: int, kinds: tuple[str, ...]) -> None:
    """The message is for this run, round and receiver, and of an expected kind (named errors otherwise)."""
    from secure_agg.errors import ReplayError

    if m.kind not in kinds:
        raise InvalidMessage(f"expected {' or '.join(kinds)}, got a {m.kind!r} message")
    if m.run_id != run_id or m.round != round_index:
        raise ReplayError(f"{m.kind} message of run {m.run_id!r} round {m.round} replayed into run {run_id!r} "
                          f"round {round_index}")
    if m.receiver != receiver:
        raise InvalidMessage(f"{m.kind} message addressed to {m.receiver}, not {receiver}")


# -- transport codec -------------------------------------------------------------------------------------------
def encode(m: Message) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, arrays) for a transport: scalars and lists of one scalar type, and named numpy arrays."""
    config = {"v": VERSION, "kind": m.kind, "run": m.run_id, "round": m.round, "from": m.sender, "to": m.receiver,
              "sig": m.signature}
    for k, v in m.fields.items():
        config["f." + k] = list(v) if isinstance(v, list) else v
    return config, {k: np.ascontiguousarray(a) for k, a in m.arrays.items()}


def decode(config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Message:
    """Strict inverse of :func:`encode` (InvalidMessage on any unknown, missing or mistyped entry)."""
    header = {"v": int, "kind": str, "run": str, "round": int, "from": int, "to": int, "sig": bytes}
    for k, typ in header.items():
        if k not in config:
            raise InvalidMessage(f"message header lacks {k!r}")
        _check_value(k, config[k], typ)
    if config["v"] != VERSION:
        raise InvalidMessage(f"unsupported message version {config['v']!r}")
    extra = [k for k in config if k not in header and not k.startswith("f.")]
    if extra:
        raise InvalidMessage(f"unknown message entries {sorted(extra)}")
    fields = {k[2:]: (list(v) if isinstance(v, list) else v) for k, v in config.items() if k.startswith("f.")}
    arrays = dict(arrays)
    _check_fields(config["kind"], fields, arrays)
    return Message(config["kind"], config["run"], config["round"], config["from"], config["to"], fields, arrays,
                   config["sig"])

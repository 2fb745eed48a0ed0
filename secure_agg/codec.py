"""Message <-> (config, arrays) for Flower's RecordDict (a ConfigRecord and an ArrayRecord).

``encode(msg)`` returns ``(config, arrays)``: config maps str -> int | float | str | bytes | bool | list of one
such type (no tuples, no int-keyed dicts: id -> value mappings are already parallel lists); arrays maps str ->
numpy array (only :class:`~secure_agg.messages.MaskedInput` has one). ``decode`` is strict: an unknown type or
version, a missing or extra field, or a value of the wrong type raises InvalidMessage.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np

from secure_agg.errors import InvalidMessage
from secure_agg.messages import ALL_MESSAGES, VERSION, Header

TYPE_KEY = "secagg_type"
_ARRAY_FIELDS = {"masked"}
# element type of each tuple field (checked on decode)
_LIST_TYPES = {"client_ids": int, "ids": int, "commitments": bytes, "signatures": bytes, "nonces": bytes,
               "c_pks": bytes, "s_pks": bytes, "receivers": int, "ciphertexts": bytes, "senders": int,
               "survivors": int, "dropped": int, "signers": int, "signer_ids": int, "self_mask_ids": int,
               "self_mask_shares": bytes, "key_ids": int, "key_shares": bytes}
_SCALAR_TYPES = {"version": int, "run_id": str, "round_index": int, "stage": str, "sender": int, "threshold": int,
                 "degree": int, "modulus_bits": int, "levels": int, "clip_range": float, "dim": int,
                 "roster_fingerprint": str, "degree_rule": str, "commitment": bytes, "signature": bytes,
                 "nonce": bytes, "c_pk": bytes, "s_pk": bytes, "b_commitment": bytes}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def encode(msg) -> tuple[dict, dict]:
    if not isinstance(msg, Header) or type(msg).__name__ not in ALL_MESSAGES:
        raise TypeError(f"not a secure_agg message: {type(msg).__name__}")
    config: dict = {TYPE_KEY: type(msg).__name__}
    arrays: dict = {}
    for name in _fields(type(msg)):
        v = getattr(msg, name)
        if name in _ARRAY_FIELDS:
            arrays[name] = np.ascontiguousarray(v)
        elif name in _LIST_TYPES:
            config[name] = [int(x) if _LIST_TYPES[name] is int else bytes(x) for x in v]
        else:
            config[name] = v
    return config, arrays


def _check(name: str, v, typ) -> None:
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise InvalidMessage(f"field {name!r} must be an int")
    if typ is not int and not isinstance(v, typ):
        raise InvalidMessage(f"field {name!r} must be {typ.__name__}")


def decode(config: typing.Mapping, arrays: typing.Mapping | None = None):
    arrays = {} if arrays is None else arrays
    if not isinstance(config, typing.Mapping) or not isinstance(arrays, typing.Mapping):
        raise InvalidMessage("config and arrays must be mappings")
    cls = ALL_MESSAGES.get(config.get(TYPE_KEY)) if isinstance(config.get(TYPE_KEY), str) else None
    if cls is None:
        raise InvalidMessage(f"unknown message type {config.get(TYPE_KEY)!r}")
    names = _fields(cls)
    want_cfg = {n for n in names if n not in _ARRAY_FIELDS} | {TYPE_KEY}
    want_arr = {n for n in names if n in _ARRAY_FIELDS}
    if set(config) != want_cfg or set(arrays) != want_arr:
        raise InvalidMessage(f"{cls.__name__}: fields {sorted(set(config) ^ want_cfg) + sorted(set(arrays) ^ want_arr)}"
                             " missing or unexpected")
    if config["version"] != VERSION or isinstance(config["version"], bool):
        raise InvalidMessage(f"unsupported protocol version {config['version']!r}")
    kw = {}
    for n in names:
        if n in _ARRAY_FIELDS:
            a = arrays[n]
            if not isinstance(a, np.ndarray) or a.dtype != np.uint32 or a.ndim != 1:
                raise InvalidMessage(f"field {n!r} must be a 1-D uint32 array")
            kw[n] = a
        elif n in _LIST_TYPES:
            v = config[n]
            if not isinstance(v, list):
                raise InvalidMessage(f"field {n!r} must be a list")
            for x in v:
                _check(n, x, _LIST_TYPES[n])
            kw[n] = tuple(v)
        else:
            typ = _SCALAR_TYPES.get(n)
            if typ is None:
                raise InvalidMessage(f"field {n!r} has no declared type")
            _check(n, config[n], typ)
            kw[n] = config[n]
    return cls(**kw)

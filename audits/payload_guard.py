"""Guard against raw data, gradients, unmasked updates, keys, seeds and shares entering the ledger.

A payload key is refused when, after normalisation (camelCase and '-', '.', ' ' to snake_case, lower case), it equals
a denylisted name or ends with ``"_" + name`` (so ``mask_seed`` and ``client_private_key`` are refused while
``image_size`` and ``max_grad_norm`` are allowed). Keys are checked at every nesting depth. String values that
contain a PEM private key are refused as well. This is a denylist: it catches mistakes, it does not prove absence.

One exemption: ``run_start.config.seed``, the reproducibility seed of the *non-secret* generators (DESIGN §3.7); it is
in config.toml anyway. The report states that DP noise and masks must never be derived from it.
"""

from __future__ import annotations

import re
from typing import Any

from audits.errors import ForbiddenPayloadError

DENYLIST = frozenset({
    "private_key", "privkey", "secret_key", "signing_key", "secret", "secrets", "password", "key_material",
    "seed", "seeds", "mask", "masks", "share", "shares", "shamir_share", "prg_key",
    "gradient", "gradients", "grad", "grads", "per_sample_grad", "per_sample_grads", "grad_sample",
    "image", "images", "pixels", "raw", "raw_data", "sample_data", "x_train", "inputs", "features",
    "update_vector", "update_vectors", "update", "updates", "delta_vector", "masked_update", "unmasked_update",
    "masked_input", "weights", "state_dict", "tensor", "tensors",
})
EXEMPT_PATHS = frozenset({("run_start", ("config", "seed"))})
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def normalise_key(key: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key)
    return re.sub(r"[-. ]+", "_", s).lower()


def forbidden_name(key: str) -> str | None:
    n = normalise_key(key)
    for term in DENYLIST:
        if n == term or n.endswith("_" + term):
            return term
    return None


def check_payload(kind: str, payload: Any) -> None:
    """Raise ForbiddenPayloadError naming the offending path; return None when the payload looks clean."""
    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ForbiddenPayloadError(f"{kind}.{'.'.join(path)}: non-string key {k!r}")
                p = path + (k,)
                term = forbidden_name(k)
                if term is not None and (kind, p) not in EXEMPT_PATHS:
                    raise ForbiddenPayloadError(
                        f"{kind} payload key {'.'.join(p)!r} looks like {term!r}: the ledger never holds raw data, "
                        "gradients, unmasked updates, keys, seeds or shares")
                walk(v, p)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, path + (f"[{i}]",))
        elif isinstance(value, str) and _PEM_PRIVATE.search(value):
            raise ForbiddenPayloadError(f"{kind} payload at {'.'.join(path)!r} contains a PEM private key")
    walk(payload, ())

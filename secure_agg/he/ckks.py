"""CKKS contexts for additive aggregation over TenSEAL: the key holder's secret context, the public context the
sites encrypt with, and the server's ciphertext sum. Long vectors are packed N/2 values per ciphertext (one
TenSEAL ``CKKSVector`` holds as many ciphertexts as it needs).

Who holds what: :class:`SecretContext` only the key holder (it can decrypt); :class:`PublicContext` everyone else —
it carries the public encryption and relinearisation keys and no secret key (``make_context_public()``), so it can
encrypt and add but not decrypt. Every failure on a site's ciphertext is a named
:class:`~secure_agg.errors.CiphertextError`.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import tenseal as ts

from secure_agg.errors import (DecryptionRangeError, ForeignContextError, InsecureParametersError,
                               MalformedCiphertextError, WrongLengthError)
from secure_agg.he.flooding import DEFAULT_GRID_BITS, DEFAULT_SIGMA, flood
from secure_agg.he.params import CkksParams


def digest(data: bytes) -> str:
    """Hex SHA-256 (of a serialized context or ciphertext)."""
    return hashlib.sha256(data).hexdigest()


def _to_bytes(ciphertext: bytes | np.ndarray) -> bytes:
    if isinstance(ciphertext, np.ndarray):
        if ciphertext.dtype != np.uint8 or ciphertext.ndim != 1:
            raise MalformedCiphertextError("a ciphertext travels as a one-dimensional uint8 array")
        return ciphertext.tobytes()
    if not isinstance(ciphertext, bytes):
        raise MalformedCiphertextError(f"a ciphertext is bytes, not {type(ciphertext).__name__}")
    return ciphertext


class PublicContext:
    """A public CKKS context: encrypt and add, never decrypt."""

    def __init__(self, data: bytes, *, params: CkksParams, n_threads: int | None = None) -> None:
        try:
            ctx = ts.context_from(bytes(data), n_threads=n_threads) if n_threads else ts.context_from(bytes(data))
        except (ValueError, RuntimeError, TypeError) as e:
            raise MalformedCiphertextError(f"the public context does not parse ({e})") from None
        if ctx.has_secret_key() or not ctx.is_public():
            raise InsecureParametersError("the published CKKS context carries a secret key: refusing it")
        ctx.global_scale = 2.0 ** params.scale_bits
        self._ctx = ctx
        self.params = params
        self.data = bytes(data)
        self.sha256 = digest(self.data)

    def encrypt(self, vector: np.ndarray) -> bytes:
        """Encrypt a real vector (any length; N/2 values per ciphertext); returns the serialized CKKS vector."""
        v = np.asarray(vector, dtype=np.float64).ravel()
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError("encrypt needs a non-empty finite vector")
        if np.max(np.abs(v)) >= self.params.value_bound:
            raise ValueError(f"|values| must stay below {self.params.value_bound:g} for these parameters")
        return ts.ckks_vector(self._ctx, v.tolist()).serialize()

    def load(self, ciphertext: bytes | np.ndarray, *, dim: int) -> "ts.CKKSVector":
        """Parse a site's ciphertext under this context; named errors for malformed, foreign and wrong-length."""
        data = _to_bytes(ciphertext)
        try:
            vec = ts.ckks_vector_from(self._ctx, data)
        except (ValueError, RuntimeError, TypeError) as e:
            raise MalformedCiphertextError(f"ciphertext of {len(data)} bytes does not parse ({e})") from None
        self._check_parts(vec)
        if vec.size() != dim:
            raise WrongLengthError(f"ciphertext holds {vec.size()} values, the model has {dim}")
        return vec

    def _check_parts(self, vec: "ts.CKKSVector") -> None:
        """Every packed ciphertext is fresh under this context: 2 polynomials, N coefficients, the data level, the
        round's scale and not transparent (ForeignContextError / MalformedCiphertextError otherwise)."""
        p = self.params
        for ct in vec.data.ciphertext():
            if ct.poly_modulus_degree() != p.poly_modulus_degree or \
                    ct.coeff_modulus_size() != len(p.coeff_mod_bit_sizes) - 1:
                raise ForeignContextError(f"ciphertext of degree {ct.poly_modulus_degree()} with "
                                          f"{ct.coeff_modulus_size()} primes; the round's context has "
                                          f"{p.poly_modulus_degree} and {len(p.coeff_mod_bit_sizes) - 1}")
            if not np.isclose(ct.scale, 2.0 ** p.scale_bits, rtol=1e-9):
                raise ForeignContextError(f"ciphertext at scale 2^{np.log2(ct.scale):.1f}, the round's is "
                                          f"2^{p.scale_bits}")
            if ct.size() != 2 or ct.is_transparent() or not ct.is_ntt_form():
                raise MalformedCiphertextError("not a fresh two-polynomial CKKS ciphertext")

    def add(self, vectors: Sequence["ts.CKKSVector"]) -> bytes:
        """Sum of ciphertexts (additions only, accumulated into the first one); returns the serialized sum."""
        if not vectors:
            raise ValueError("nothing to add")
        acc = vectors[0]
        for v in vectors[1:]:
            acc.add_(v)
        return acc.serialize()


class SecretContext:
    """The key holder's context (holds the secret key). Only :meth:`decrypt_flooded` releases anything."""

    def __init__(self, ctx: "ts.Context", params: CkksParams) -> None:
        if not ctx.has_secret_key():
            raise ValueError("a secret context needs the secret key")
        self._ctx = ctx
        self.params = params

    @classmethod
    def create(cls, params: CkksParams, *, n_threads: int | None = None) -> "SecretContext":
        params.check()
        extra = {"n_threads": n_threads} if n_threads else {}
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes), **extra)
        ctx.global_scale = 2.0 ** params.scale_bits
        return cls(ctx, params)

    @classmethod
    def from_secret_bytes(cls, data: bytes, params: CkksParams) -> "SecretContext":
        params.check()
        ctx = ts.context_from(data)
        ctx.global_scale = 2.0 ** params.scale_bits
        return cls(ctx, params)

    def secret_bytes(self) -> bytes:
        """The full context with its secret key (store with mode 0600; never send)."""
        return self._ctx.serialize(save_secret_key=True)

    def public_bytes(self) -> bytes:
        """The public context (``make_context_public()``: public and relinearisation keys, no secret key)."""
        pub = self._ctx.copy()
        pub.make_context_public()
        return pub.serialize()

    def decrypt_flooded(self, ciphertext: bytes | np.ndarray, *, dim: int, bound: float,
                        sigma: float = DEFAULT_SIGMA, grid_bits: int = DEFAULT_GRID_BITS) -> np.ndarray:
        """Decrypt a summed ciphertext, check |sum| <= bound (DecryptionRangeError otherwise: nothing released),
        then flood with N(0, sigma^2) and round to 2^-grid_bits (:mod:`secure_agg.he.flooding`)."""
        data = _to_bytes(ciphertext)
        try:
            vec = ts.ckks_vector_from(self._ctx, data)
        except (ValueError, RuntimeError, TypeError) as e:
            raise MalformedCiphertextError(f"summed ciphertext does not parse ({e})") from None
        if vec.size() != dim:
            raise WrongLengthError(f"summed ciphertext holds {vec.size()} values, expected {dim}")
        plain = np.asarray(vec.decrypt(), dtype=np.float64)
        if not np.all(np.isfinite(plain)) or np.max(np.abs(plain)) > bound:
            raise DecryptionRangeError(f"decrypted sum leaves the range |x| <= {bound:g} (max "
                                       f"{np.max(np.abs(plain)):.3g}): a foreign or garbage ciphertext was added")
        return flood(plain, sigma=sigma, grid_bits=grid_bits)

"""Homomorphic aggregation with CKKS (TenSEAL): sites encrypt under a public context, the server adds ciphertexts,
a key holder decrypts only the sum and floods it before release. Needs ``tenseal`` (the ``[he]`` extra)."""

from secure_agg.he.ckks import PublicContext, SecretContext, digest
from secure_agg.he.flooding import DEFAULT_GRID_BITS, DEFAULT_SIGMA, flood
from secure_agg.he.params import HE_STANDARD_MAX_BITS, MIN_SECURITY_BITS, CkksParams, security_level

__all__ = ["CkksParams", "security_level", "HE_STANDARD_MAX_BITS", "MIN_SECURITY_BITS", "PublicContext",
           "SecretContext", "digest", "flood", "DEFAULT_SIGMA", "DEFAULT_GRID_BITS"]

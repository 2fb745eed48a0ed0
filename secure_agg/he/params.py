"""CKKS parameters with a stated security level (HomomorphicEncryption.org security standard, Albrecht et al.
2018, Table 1: ternary secret, classical attacks).

For a ring dimension N the table bounds the total coefficient-modulus bits (every prime, the special prime
included) that keep at least 128-bit classical security:

    N      1024  2048  4096  8192  16384  32768
    bits     27    54   109   218    438    881

:func:`security_level` returns the highest level of the table (128, 192 or 256) a parameter set meets and
:meth:`CkksParams.check` refuses anything below 128 bits with :class:`InsecureParametersError`.

privfed's default: N = 8192, primes [60, 40, 60] (160 bits <= 218: 128-bit), scale 2^80. Aggregation only adds
ciphertexts, so no level is ever consumed: one 60-bit special prime for key switching, and a 100-bit data level of
which the scale takes 80 bits, leaving 2^19 for the magnitude of the sum (the sum of clipped, weighted updates is at
most the clip range). The large scale puts the fresh encryption error near 2^-63 in the update's units, far below
the flooding noise the key holder adds before release (:mod:`secure_agg.he.flooding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from secure_agg.errors import InsecureParametersError

# N -> max total coefficient-modulus bits for 128-, 192- and 256-bit classical security (ternary secret)
HE_STANDARD_MAX_BITS: dict[int, dict[int, int]] = {
    1024: {128: 27, 192: 19, 256: 14},
    2048: {128: 54, 192: 37, 256: 29},
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}
MIN_SECURITY_BITS = 128


def security_level(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int] | tuple[int, ...]) -> int:
    """The highest classical security level (0, 128, 192 or 256 bits) of the standard's table these meet."""
    row = HE_STANDARD_MAX_BITS.get(int(poly_modulus_degree))
    if row is None:
        return 0
    total = int(sum(coeff_mod_bit_sizes))
    return max((lvl for lvl, bits in row.items() if total <= bits), default=0)


@dataclass(frozen=True, kw_only=True)
class CkksParams:
    """CKKS parameters for additive aggregation. ``scale_bits``: log2 of the encoding scale."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = field(default=(60, 40, 60))
    scale_bits: int = 80

    def __post_init__(self) -> None:
        if not isinstance(self.poly_modulus_degree, int) or isinstance(self.poly_modulus_degree, bool):
            raise TypeError("poly_modulus_degree must be an int")
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(int(b) for b in self.coeff_mod_bit_sizes))
        if len(self.coeff_mod_bit_sizes) < 2 or not all(17 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ValueError("coeff_mod_bit_sizes: at least two primes (data level + special prime), each of "
                             f"17..60 bits; got {list(self.coeff_mod_bit_sizes)}")
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        if not 20 <= self.scale_bits < data_bits - 1:
            raise ValueError(f"scale_bits {self.scale_bits} must leave room in the {data_bits}-bit data level "
                             "(20 <= scale_bits < data bits - 1)")
        self.check()

    @property
    def total_bits(self) -> int:
        return int(sum(self.coeff_mod_bit_sizes))

    @property
    def security_bits(self) -> int:
        return security_level(self.poly_modulus_degree, self.coeff_mod_bit_sizes)

    @property
    def slots(self) -> int:
        """Values packed per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def value_bound(self) -> float:
        """|sum| must stay below this (2^(data bits - scale bits - 1)) or it wraps around the modulus."""
        return float(2 ** (sum(self.coeff_mod_bit_sizes[:-1]) - self.scale_bits - 1))

    def check(self) -> int:
        """Return the security level; raise InsecureParametersError below 128 bits."""
        lvl = self.security_bits
        if lvl < MIN_SECURITY_BITS:
            row = HE_STANDARD_MAX_BITS.get(self.poly_modulus_degree)
            limit = (f"at most {row[128]} bits for N = {self.poly_modulus_degree}" if row
                     else f"N must be one of {sorted(HE_STANDARD_MAX_BITS)}")
            raise InsecureParametersError(
                f"CKKS parameters N = {self.poly_modulus_degree}, coefficient modulus "
                f"{list(self.coeff_mod_bit_sizes)} ({self.total_bits} bits) are below 128-bit security "
                f"(HomomorphicEncryption.org standard: {limit})")
        return lvl

    def describe(self) -> dict:
        """JSON-able description (for the ledger and the report)."""
        return {"scheme": "CKKS", "poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "total_bits": self.total_bits,
                "scale": f"2^{self.scale_bits}", "security_bits": self.security_bits,
                "security_reference": "HomomorphicEncryption.org standard (2018), Table 1, classical, ternary secret",
                "log2_value_bound": math.log2(self.value_bound)}

    @classmethod
    def from_description(cls, d: dict) -> "CkksParams":
        return cls(poly_modulus_degree=int(d["poly_modulus_degree"]),
                   coeff_mod_bit_sizes=tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
                   scale_bits=int(str(d["scale"]).removeprefix("2^")))

"""What a site pins before any round (DESIGN §1): the least it accepts from a server's setup.

The server proposes (n, t, degree); each site checks the proposal against its own :class:`ProtocolPolicy` and
refuses anything weaker with :class:`~secure_agg.errors.PolicyViolation`. The server cannot lower these values:
they never travel in a message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secure_agg.degree_bound import required_degree
from secure_agg.errors import PolicyViolation


def _int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")


@dataclass(frozen=True)
class ProtocolPolicy:
    """A site's pinned minimums (keyword-only).

    min_clients: fewest sites (n, as listed in the setup) in a round.
    min_threshold: smallest Shamir threshold t accepted (>= 2).
    max_colluders: n_C, how many sites may collude with an active server; every round needs
        t >= floor((n + n_C)/2) + 1 (two survivor views would otherwise both gather t signatures).
    min_degree: optional floor on the SecAgg+ neighbour degree (None: only the bound below).
    failure_log2: σ; the SecAgg+ degree must make the graph's privacy failure probability <= 2^-σ per round.
    max_dropout_fraction: δ in [0, 1), the dropout rate (fraction of n) the degree bound must tolerate.
    """

    min_clients: int = 3
    min_threshold: int = 2
    max_colluders: int = 0
    min_degree: int | None = None
    failure_log2: int = 40
    max_dropout_fraction: float = 0.1

    def __init__(self, *, min_clients: int = 3, min_threshold: int = 2, max_colluders: int = 0,
                 min_degree: int | None = None, failure_log2: int = 40, max_dropout_fraction: float = 0.1) -> None:
        _int("min_clients", min_clients, 2)
        _int("min_threshold", min_threshold, 2)
        _int("max_colluders", max_colluders, 0)
        if min_degree is not None:
            _int("min_degree", min_degree, 1)
        _int("failure_log2", failure_log2, 1)
        if failure_log2 > 256:
            raise ValueError("failure_log2 must be <= 256")
        f = max_dropout_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise TypeError("max_dropout_fraction must be a number")
        if not (math.isfinite(f) and 0.0 <= f < 1.0):
            raise ValueError("max_dropout_fraction must be in [0, 1)")
        for k, v in (("min_clients", min_clients), ("min_threshold", min_threshold),
                     ("max_colluders", max_colluders), ("min_degree", min_degree), ("failure_log2", failure_log2),
                     ("max_dropout_fraction", float(f))):
            object.__setattr__(self, k, v)

    def min_threshold_for(self, n: int) -> int:
        """The smallest t this site accepts for n sites: max(min_threshold, floor((n + n_C)/2) + 1)."""
        return max(self.min_threshold, (n + self.max_colluders) // 2 + 1)

    def required_degree(self, n: int, t: int) -> int:
        """Smallest SecAgg+ degree this site accepts for n sites and threshold t (n − 1: full graph)."""
        bound = required_degree(n, colluder_fraction=min(self.max_colluders / n, 0.999),
                                dropout_fraction=self.max_dropout_fraction, failure_log2=self.failure_log2,
                                threshold=t)
        return min(n - 1, max(bound, self.min_degree or 0))

    def as_dict(self) -> dict:
        return {"min_clients": self.min_clients, "min_threshold": self.min_threshold,
                "max_colluders": self.max_colluders, "min_degree": self.min_degree,
                "failure_log2": self.failure_log2, "max_dropout_fraction": self.max_dropout_fraction}

    def check(self, *, n: int, threshold: int, degree: int) -> None:
        """PolicyViolation unless a setup of n sites, threshold t and degree k meets this policy."""
        if n < self.min_clients:
            raise PolicyViolation(f"{n} sites < pinned min_clients {self.min_clients}")
        t_min = self.min_threshold_for(n)
        if threshold < t_min:
            raise PolicyViolation(f"threshold t={threshold} < {t_min} = max(min_threshold {self.min_threshold}, "
                                  f"floor((n {n} + max_colluders {self.max_colluders})/2) + 1)")
        if threshold > n:
            raise PolicyViolation(f"threshold t={threshold} > n={n}")
        if self.max_colluders >= threshold:
            raise PolicyViolation(f"max_colluders {self.max_colluders} >= t {threshold}")
        k_min = self.required_degree(n, threshold)
        if degree < k_min:
            raise PolicyViolation(f"SecAgg+ degree {degree} < {k_min} required by this site's policy "
                                  f"(Bell et al. bound at 2^-{self.failure_log2}, n_C={self.max_colluders}, "
                                  f"dropout {self.max_dropout_fraction}, min_degree {self.min_degree})")

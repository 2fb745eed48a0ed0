"""Server-side round parameters (:class:`SecAggParams`) and :func:`validate_params`, which config code calls at load
time so that a configuration every site would refuse fails before a run directory or ledger exists."""

from __future__ import annotations

import math
from dataclasses import dataclass

from secure_agg import graph
from secure_agg.degree_bound import liveness_failure_log2, required_degree
from secure_agg.policy import ProtocolPolicy
from secure_agg.quantize import make_quantizer

MODES = ("secagg", "secagg+")
LIVENESS_LOG2 = 10  # auto degree: P[some site loses too many neighbours to δ·n random dropouts] <= 2^-10


def _num(name, v, ok, msg):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise ValueError(f"{name} {msg}, got {v!r}")


@dataclass(frozen=True)
class SecAggParams:
    """What the server proposes each round (sites check it against their own pinned policy).

    mode: "secagg" (full graph) | "secagg+" (sparse random Harary graph).
    clip_range: per-coordinate clip c before quantization (units of the input).
    threshold_fraction: t = floor(f·n) + 1; f in [0.5, 1) so that n/2 < t <= n (anything else every site refuses).
    neighbours: SecAgg+ degree; None -> the Bell et al. bound for (max_colluders, dropout_fraction, failure_log2),
        raised until random dropouts at that rate break a neighbourhood with probability <= 2^-10.
    modulus_bits: k of Z_{2^k}; None -> 32.
    max_colluders, dropout_fraction, failure_log2: the assumptions the auto degree is computed for (match the
        sites' pinned ProtocolPolicy, or they will refuse the setup).
    """

    mode: str = "secagg+"
    clip_range: float = 1.0
    threshold_fraction: float = 0.67
    neighbours: int | None = None
    modulus_bits: int | None = None
    max_colluders: int = 0
    dropout_fraction: float = 0.1
    failure_log2: int = 40

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _num("clip_range", self.clip_range, lambda v: v > 0, "must be a positive finite number")
        _num("threshold_fraction", self.threshold_fraction, lambda v: 0.5 <= v < 1.0,
             "must be in [0.5, 1): t = floor(f·n)+1 must satisfy n/2 < t <= n")
        if self.neighbours is not None and (isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int)
                                            or self.neighbours < 1):
            raise ValueError("neighbours must be None or a positive int")
        if self.modulus_bits is not None and (isinstance(self.modulus_bits, bool)
                                              or not isinstance(self.modulus_bits, int)
                                              or not 1 <= self.modulus_bits <= 32):
            raise ValueError("modulus_bits must be None or an int in 1..32")
        if isinstance(self.max_colluders, bool) or not isinstance(self.max_colluders, int) or self.max_colluders < 0:
            raise ValueError("max_colluders must be a non-negative int")
        _num("dropout_fraction", self.dropout_fraction, lambda v: 0 <= v < 1, "must be in [0, 1)")
        if isinstance(self.failure_log2, bool) or not isinstance(self.failure_log2, int) \
                or not 1 <= self.failure_log2 <= 256:
            raise ValueError("failure_log2 must be an int in 1..256")

    def threshold(self, n: int) -> int:
        return int(math.floor(self.threshold_fraction * n)) + 1

    def degree_and_rule(self, n: int) -> tuple[int, str]:
        """(degree, how it was chosen) for n sites."""
        if self.mode == "secagg" or n <= 3:
            return n - 1, "full graph (SecAgg)"
        if self.neighbours is not None:
            return graph.effective_degree(n, self.neighbours), f"configured neighbours={self.neighbours}"
        t = self.threshold(n)
        gamma = min(self.max_colluders / n, 0.999)
        k = required_degree(n, colluder_fraction=gamma, dropout_fraction=self.dropout_fraction,
                            failure_log2=self.failure_log2, threshold=min(t, n))
        k_priv = k
        while k < n - 1 and liveness_failure_log2(n, k, threshold=t, dropout_fraction=self.dropout_fraction) \
                > -LIVENESS_LOG2:
            k += 2
        k = min(k, n - 1)
        return k, (f"Bell et al. 2020 bound: privacy failure <= 2^-{self.failure_log2} needs k >= {k_priv} "
                   f"(n={n}, t={t}, n_C={self.max_colluders}, dropout {self.dropout_fraction}); "
                   f"raised to {k} for liveness <= 2^-{LIVENESS_LOG2}" + (" (full graph)" if k >= n - 1 else ""))

    def degree(self, n: int) -> int:
        return self.degree_and_rule(n)[0]


def validate_params(params: SecAggParams, n: int, policy: ProtocolPolicy) -> None:
    """ValueError unless every site pinning ``policy`` would accept a round of ``n`` sites under ``params``.

    Checks what the sites check at setup: n >= min_clients, n/2 < t <= n, t >= floor((n + n_C)/2) + 1 and
    min_threshold, the SecAgg+ degree against the policy's Bell et al. bound, and that n sites fit in Z_2^k.
    """
    if not isinstance(params, SecAggParams):
        raise TypeError("params must be SecAggParams")
    if not isinstance(policy, ProtocolPolicy):
        raise TypeError("policy must be ProtocolPolicy")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError("n must be an int >= 2")
    if n < policy.min_clients:
        raise ValueError(f"{n} sites < the sites' pinned min_clients {policy.min_clients}")
    t = params.threshold(n)
    if not (2 * t > n and 2 <= t <= n):
        raise ValueError(f"threshold_fraction={params.threshold_fraction} gives t={t} for n={n}: need n/2 < t <= n")
    t_min = policy.min_threshold_for(n)
    if t < t_min:
        raise ValueError(f"threshold_fraction={params.threshold_fraction} gives t={t} for n={n}, below the sites' "
                         f"minimum {t_min} (max_colluders={policy.max_colluders}, min_threshold="
                         f"{policy.min_threshold})")
    k, _ = params.degree_and_rule(n)
    k_min = policy.required_degree(n, t)
    if k < k_min:
        raise ValueError(f"SecAgg+ degree {k} for n={n} < {k_min} required by the sites' policy")
    make_quantizer(n_clients=n, clip_range=params.clip_range, modulus_bits=params.modulus_bits)

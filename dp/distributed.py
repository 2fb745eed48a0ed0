"""Accounting for the distributed discrete Gaussian (DDG) mechanism under secure aggregation.

Mechanism (Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", arXiv:2102.06387): every site adds, in the integer domain of the aggregation (units:
quantization steps), an independent share X_i ~ N_Z(0, σ²)^d (``share_stddev`` σ). Only the shares of the honest
survivors count — the server knows the colluders' shares and dropped sites add nothing — so the accounted noise is
the sum of ``honest_sites`` n shares. The released sum moves by an integer vector Δ of L2 norm ≤ Δ2 and L1 norm
≤ Δ1 (in quantization steps) when one unit's data changes.

RDP bound (KLS21 Theorem 1 / Proposition 14), for every order α > 1, with τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)):

    ε(α) ≤ min{ α·Δ2²/(2nσ²) + τ·d,
                α/2 · (Δ2²/(nσ²) + 2·Δ1·τ/(√n·σ) + τ²·d),
                α/2 · (Δ2/(√n·σ) + τ·√d)² }

(n = 1, τ = 0: the discrete Gaussian, whose RDP is at most the continuous Gaussian's, CKS 2020). Poisson subsampling
at rate q uses the general upper bound of Zhu & Wang 2019 ("Poisson Subsampled Rényi Differential Privacy",
Theorem 6) at integer orders — valid for any mechanism with the RDP curve above (dp_accounting has no multivariate
discrete-Gaussian or DDG event, and its subsampled-Gaussian RDP assumes a continuous Gaussian). Steps compose by
adding RDP; (ε, δ) comes from ``dp_accounting``'s RDP→DP conversion over the integer orders 2..256.

Sensitivity inflation by rounding (:func:`rounding_l2_bound`): the site's contribution is its update scaled to
quantization steps and stochastically rounded; each rounded coordinate is within one step of the scaled value, and
the neighbouring contribution (the zero update) is rounded too, so Δ2 ≤ C/γ + 2√d and, for integer vectors,
Δ1 ≤ min(√d·Δ2, Δ2²).

Units: ε and δ are the usual (ε, δ)-DP parameters; σ, Δ1, Δ2 are in quantization steps; d is the number of
coordinates; probabilities are per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

EVENT_TYPE = "distributed_discrete_gaussian"
ORDERS = tuple(range(2, 257))          # integer orders: the subsampling bound is stated for integers


def tau(share_stddev: float, shares: int) -> float:
    """KLS21's τ: how far the sum of ``shares`` discrete Gaussians (parameter σ each) is from N_Z(0, nσ²)."""
    s2 = float(share_stddev) ** 2
    return 10.0 * math.fsum(math.exp(-2 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, int(shares)))


def ddg_rdp(alpha: float, *, l2_scale: float, l1_scale: float, tau_: float, dimension: int) -> float:
    """RDP of one (un-subsampled) DDG release at order α (KLS21 Prop. 14): l2_scale = Δ2/(√n σ), l1_scale =
    Δ1/(√n σ)."""
    d = float(dimension)
    t1 = alpha / 2 * l2_scale ** 2 + tau_ * d
    t2 = alpha / 2 * (l2_scale ** 2 + 2 * l1_scale * tau_ + tau_ ** 2 * d)
    t3 = alpha / 2 * (l2_scale + math.sqrt(d) * tau_) ** 2
    return min(t1, t2, t3)


def poisson_subsampled_rdp(alpha: int, q: float, rdp) -> float:
    """Zhu & Wang 2019 Theorem 6 upper bound on the RDP (order α ≥ 2, integer) of a mechanism with RDP curve
    ``rdp(l)`` run on a Poisson subsample at rate q; never above ``rdp(alpha)`` itself (quasi-convexity)."""
    if isinstance(alpha, bool) or int(alpha) != alpha or alpha < 2:
        raise ValueError("the Poisson-subsampling RDP bound needs an integer order >= 2")
    alpha = int(alpha)
    base = rdp(alpha)
    if q >= 1.0:
        return base
    if q <= 0.0:
        return 0.0
    lq, l1q = math.log(q), math.log1p(-q)
    terms = [(alpha - 1) * l1q + math.log(alpha * q - q + 1),
             math.log(alpha * (alpha - 1) / 2) + 2 * lq + (alpha - 2) * l1q + rdp(2)]
    for j in range(3, alpha + 1):
        log_comb = math.lgamma(alpha + 1) - math.lgamma(j + 1) - math.lgamma(alpha - j + 1)
        terms.append(math.log(3) + log_comb + (alpha - j) * l1q + j * lq + (j - 1) * rdp(j))
    m = max(terms)
    bound = (m + math.log(math.fsum(math.exp(t - m) for t in terms))) / (alpha - 1)
    return min(bound, base)


@dataclass(frozen=True)
class DistributedGaussianEvent:
    """``steps`` compositions of the Poisson-subsampled distributed discrete Gaussian (see module docstring).

    share_stddev: σ of each honest share N_Z(0, σ²), in quantization steps. honest_sites: n, the shares that
    count (pinned threshold minus the colluder bound). l2_sensitivity / l1_sensitivity: Δ2 / Δ1 in quantization
    steps (rounding included). dimension: d. sample_rate: q (Poisson, per step). steps: compositions.
    """

    share_stddev: float
    honest_sites: int
    l2_sensitivity: float
    l1_sensitivity: float
    dimension: int
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        for name in ("share_stddev", "l2_sensitivity", "l1_sensitivity", "sample_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite real number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("honest_sites", "dimension", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if self.honest_sites < 1:
            raise ValueError(f"honest_sites must be >= 1 (no honest noise, no privacy); got {self.honest_sites}")
        if self.share_stddev < 0.5:
            raise ValueError(f"share_stddev must be >= 1/2 quantization step (KLS21 Theorem 1); got "
                             f"{self.share_stddev}")
        if self.l2_sensitivity <= 0 or self.l1_sensitivity <= 0 or self.dimension < 1 or self.steps < 0:
            raise ValueError("sensitivities must be > 0, dimension >= 1, steps >= 0")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {self.sample_rate}")

    @property
    def noise_multiplier(self) -> float:
        """Effective σ/C of the honest noise: √n·σ / Δ2 (dimensionless; what a continuous Gaussian would need)."""
        return math.sqrt(self.honest_sites) * self.share_stddev / self.l2_sensitivity

    def rdp(self, orders: Iterable[int] = ORDERS) -> np.ndarray:
        """RDP of all ``steps`` compositions at each integer order."""
        if self.steps == 0 or self.sample_rate == 0.0:
            return np.zeros(len(tuple(orders)))
        root = math.sqrt(self.honest_sites) * self.share_stddev
        kw = dict(l2_scale=self.l2_sensitivity / root, l1_scale=self.l1_sensitivity / root,
                  tau_=tau(self.share_stddev, self.honest_sites), dimension=self.dimension)

        def one(a: float) -> float:
            return ddg_rdp(a, **kw)
        return np.array([poisson_subsampled_rdp(a, self.sample_rate, one) for a in orders]) * self.steps

    def to_payload(self) -> dict[str, Any]:
        """The typed event as stored in the ledger and receipts."""
        return {"type": EVENT_TYPE, "share_stddev": self.share_stddev, "honest_sites": self.honest_sites,
                "l2_sensitivity": self.l2_sensitivity, "l1_sensitivity": self.l1_sensitivity,
                "dimension": self.dimension, "sample_rate": self.sample_rate, "steps": self.steps,
                "noise_multiplier": self.noise_multiplier}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "DistributedGaussianEvent":
        if p.get("type") != EVENT_TYPE:
            raise ValueError(f"not a {EVENT_TYPE} event: type={p.get('type')!r}")
        return cls(share_stddev=float(p["share_stddev"]), honest_sites=int(p["honest_sites"]),
                   l2_sensitivity=float(p["l2_sensitivity"]), l1_sensitivity=float(p["l1_sensitivity"]),
                   dimension=int(p["dimension"]), sample_rate=float(p["sample_rate"]), steps=int(p["steps"]))


def epsilon_from_rdp(rdp: np.ndarray, *, delta: float, orders: Iterable[int] = ORDERS) -> float:
    """(ε at δ) from an RDP curve, by dp_accounting's RDP→(ε, δ) conversion."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not np.any(rdp):
        return 0.0
    return float(compute_epsilon(list(orders), list(rdp), delta)[0])


class DistributedAccountant:
    """Composes :class:`DistributedGaussianEvent` s by adding their RDP curves (same interface as
    :class:`dp.PrivacyAccountant`: ``add_event``, ``epsilon(delta=)``, ``events``)."""

    kind = "rdp"

    def __init__(self) -> None:
        self.events: list[DistributedGaussianEvent] = []
        self._rdp = np.zeros(len(ORDERS))

    def add_event(self, event: DistributedGaussianEvent) -> None:
        if not isinstance(event, DistributedGaussianEvent):
            raise TypeError(f"expected a DistributedGaussianEvent, got {type(event).__name__}")
        self.events.append(event)
        self._rdp = self._rdp + event.rdp()

    def epsilon(self, *, delta: float) -> float:
        return epsilon_from_rdp(self._rdp, delta=delta)

    def projected_epsilon(self, event: DistributedGaussianEvent, *, delta: float) -> float:
        """ε if ``event`` were added now (for budget checks before a round)."""
        return epsilon_from_rdp(self._rdp + event.rdp(), delta=delta)


def rounding_l2_bound(scaled_l2: float, dimension: int) -> float:
    """Δ2 in quantization steps after stochastic rounding: C/γ + 2√d (the update and its neighbour, the zero
    update, are each rounded by less than one step per coordinate)."""
    return float(scaled_l2) + 2.0 * math.sqrt(dimension)


def rounding_l1_bound(l2: float, dimension: int) -> float:
    """Δ1 of an integer vector with L2 norm ≤ l2: min(√d·l2, l2²) (|v| ≤ v² for integers)."""
    return min(math.sqrt(dimension) * l2, l2 * l2)


def calibrate_share_stddev(*, target_epsilon: float, target_delta: float, honest_sites: int,
                           l2_sensitivity: float, dimension: int, sample_rate: float, steps: int,
                           l1_sensitivity: float | None = None, rel_tol: float = 1e-3) -> float:
    """The smallest share σ (quantization steps, within ``rel_tol``) whose event composed ``steps`` times meets
    (target_epsilon, target_delta); never overshoots the target."""
    l1 = rounding_l1_bound(l2_sensitivity, dimension) if l1_sensitivity is None else l1_sensitivity

    def eps(s: float) -> float:
        ev = DistributedGaussianEvent(share_stddev=s, honest_sites=honest_sites, l2_sensitivity=l2_sensitivity,
                                      l1_sensitivity=l1, dimension=dimension, sample_rate=sample_rate, steps=steps)
        return epsilon_from_rdp(ev.rdp(), delta=target_delta)

    lo, hi = 0.5, max(1.0, l2_sensitivity / math.sqrt(honest_sites))
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e30:
            raise ValueError("no share σ meets the target ε")
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi


def clip_probability(*, share_stddev: float, headroom: float, dimension: int, sites: int) -> float:
    """Upper bound on the probability that any of ``sites``·d noisy coordinates leaves its range when the
    data part leaves ``headroom`` quantization steps on each side: union bound with the discrete Gaussian's
    sub-Gaussian tail P[|X| ≥ h] ≤ 2·exp(−h²/(2σ²)) (CKS 2020)."""
    if headroom <= 0:
        return 1.0
    return min(1.0, 2.0 * sites * dimension * math.exp(-headroom ** 2 / (2 * share_stddev ** 2)))

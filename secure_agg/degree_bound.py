"""SecAgg+ neighbour degree from the Bell et al. 2020 style bound (CCS 2020, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead": the communication graph must be "good" — no honest site with too many corrupt
neighbours, honest survivors connected — with probability ≥ 1 − 2^-σ).

Our graph (:mod:`secure_agg.graph`) is the Harary graph H(n, k) (a ring, each site linked to its k/2 nearest
positions on each side) over a uniformly random permutation, so a fixed site's k neighbours are a uniformly random
k-subset of the other n − 1 sites. With n_C = ceil(γ·n) colluding sites fixed before the graph is drawn, and
D = ceil(δ·n) sites removed by dropouts that do not depend on the graph, we bound (union bound over sites):

* **privacy, local threshold** (Bell et al.'s "fewer than t corrupt neighbours", strengthened to the active
  setting: the local split-view bound 2·t_loc − c > k + 1, the neighbourhood analogue of t > (n + n_C)/2):
  ``n · P[Hyp(n − 1, n_C, k) ≥ 2·t_loc − (k + 1)]`` with t_loc the local threshold the protocol uses for the
  smallest global threshold a site accepts, t = floor((n + n_C)/2) + 1;
* **privacy, connectivity** (Bell et al.'s "honest survivors stay connected", so no partial sum of honest sites
  can be isolated): H(n, k) over a random permutation can only be cut by k/2 consecutive ring positions that are
  all colluding or dropped: ``n · P[k/2 given positions all among the n_C + D removed]``.

``required_degree`` is the smallest even k whose total is ≤ 2^-failure_log2; when no sparse k qualifies it returns
n − 1 (the full graph, where the plain SecAgg analysis applies with the global t). Liveness (each site keeping
≥ t_loc surviving neighbours) is not a privacy event; :func:`liveness_failure_log2` reports it separately.
What this bound does not cover: dropouts chosen by an active server *after* it sees the graph. Those are limited
by each honest site's own check (it signs the survivor list only when ≥ t_loc of its k + 1 share holders
survived), and the graph seed itself cannot be chosen (commit-reveal, :mod:`secure_agg.graph`).
"""

from __future__ import annotations

import math
from functools import lru_cache

from secure_agg.graph import local_threshold


def _check(n, colluder_fraction, dropout_fraction, failure_log2):
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError("n must be an int >= 2")
    for name, f in (("colluder_fraction", colluder_fraction), ("dropout_fraction", dropout_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1)")
    if isinstance(failure_log2, bool) or not isinstance(failure_log2, (int, float)) or not 1 <= failure_log2 <= 256:
        raise ValueError("failure_log2 must be a number in [1, 256]")


def _lcomb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def hypergeom_tail_log2(population: int, marked: int, draws: int, at_least: int) -> float:
    """log2 P[X ≥ at_least] for X ~ Hypergeometric(population, marked, draws); −inf when impossible."""
    lo, hi = max(at_least, 0, draws - (population - marked)), min(draws, marked)
    if lo > hi:
        return -math.inf
    if lo <= 0:
        return 0.0
    base = _lcomb(population, draws)
    terms = [_lcomb(marked, x) + _lcomb(population - marked, draws - x) - base for x in range(lo, hi + 1)]
    m = max(terms)
    return (m + math.log(sum(math.exp(t - m) for t in terms))) / math.log(2)


def _counts(n: int, colluder_fraction: float, dropout_fraction: float) -> tuple[int, int]:
    return math.ceil(colluder_fraction * n - 1e-9), math.ceil(dropout_fraction * n - 1e-9)


def failure_log2(n: int, k: int, *, colluder_fraction: float, dropout_fraction: float,
                 threshold: int | None = None) -> float:
    """log2 of the bound on P[the graph H(n, k) is not private] (both terms above, union over the n sites).

    ``threshold`` is the global t (default: the smallest a site accepts, floor((n + n_C)/2) + 1)."""
    if k >= n - 1:
        return -math.inf
    n_c, d = _counts(n, colluder_fraction, dropout_fraction)
    t = (n + n_c) // 2 + 1 if threshold is None else threshold
    t_loc = local_threshold(t=t, n=n, holders=k + 1)
    priv = hypergeom_tail_log2(n - 1, n_c, k, 2 * t_loc - (k + 1))
    removed, half = min(n_c + d, n), k // 2
    if removed < half:
        conn = -math.inf
    else:
        conn = sum(math.log2((removed - j) / (n - 1 - j)) for j in range(half))
    m = max(priv, conn)
    if m == -math.inf:
        return -math.inf
    return math.log2(n) + m + math.log2(2 ** (priv - m) + 2 ** (conn - m))


@lru_cache(maxsize=256)
def required_degree(n: int, *, colluder_fraction: float, dropout_fraction: float, failure_log2: float = 40,
                    threshold: int | None = None) -> int:
    """Smallest even SecAgg+ degree k (or n − 1, the full graph) whose privacy failure bound is ≤ 2^-failure_log2.

    Bound implemented: the union bound over sites of (a) a neighbourhood with too many colluders for its local
    threshold (hypergeometric tail, active-adversary split-view form 2·t_loc − c > k + 1) and (b) a cut of the
    random Harary graph H(n, k) by k/2 consecutive colluding-or-dropped ring positions — the two security
    conditions Bell et al. 2020 (CCS) require of their random graph, evaluated exactly for our graph (exact
    hypergeometric tails, union bounds) instead of their asymptotic k = O(log n) parameter choice. See the module
    docstring for what it assumes.

    Units: ``colluder_fraction`` γ and ``dropout_fraction`` δ are fractions of n (counts rounded up);
    ``failure_log2`` σ gives the failure probability 2^-σ per round. ``threshold``: the global t of the round
    (a larger t raises every local threshold and lowers the degree needed); default the smallest a site accepts.
    """
    _check(n, colluder_fraction, dropout_fraction, failure_log2)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)
                                  or not 1 <= threshold <= n):
        raise ValueError("threshold must be an int in 1..n")
    bound = globals()["failure_log2"]
    for k in range(2, n - 1, 2):
        if bound(n, k, colluder_fraction=colluder_fraction, dropout_fraction=dropout_fraction,
                 threshold=threshold) <= -failure_log2:
            return k
    return n - 1


def liveness_failure_log2(n: int, k: int, *, threshold: int, dropout_fraction: float) -> float:
    """log2 bound on P[some site keeps fewer than t_loc of its k + 1 share holders] with ceil(δ·n) random dropouts.

    Not a privacy event (the round aborts, fail-closed); reported so an operator can size k for availability.
    """
    if k >= n - 1:
        return -math.inf
    d = math.ceil(dropout_fraction * n - 1e-9)
    t_loc = local_threshold(t=threshold, n=n, holders=k + 1)
    tail = hypergeom_tail_log2(n - 1, d, k, (k + 1) - t_loc + 1)
    return -math.inf if tail == -math.inf else min(0.0, math.log2(n) + tail)

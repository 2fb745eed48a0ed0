"""Empirical privacy audits from attack scores (numpy/scipy only; the model side lives in privfed.empirical).

* :func:`membership_inference` — AUC and TPR at low FPR of a score that should be higher for training members,
  with percentile-bootstrap confidence intervals.
* :func:`best_lower_bound` — the one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023, "Privacy Auditing with
  One (1) Training Run"): m canaries are each included independently with probability ½; the auditor guesses
  "in" for the k₊ highest scores and "out" for the k₋ lowest; if the training were (ε, δ)-DP the number of
  correct guesses W would satisfy

      P[W ≥ v] ≤ P[Bin(r, eᵋ/(1+eᵋ)) ≥ v] + 2mδ · max_{i=1..v} (1/i) · P[v−i ≤ Bin(r, eᵋ/(1+eᵋ)) < v]

  (their Theorem 5.2), r = k₊ + k₋ guesses. The lower bound is the largest ε rejected at the requested confidence.
  Several (k₊, k₋) are tried; the significance level is split over them (Bonferroni), so the reported maximum
  still holds at the stated confidence.

A lower bound is evidence *against* a claim; it can never certify one. If it exceeds the accountant's ε, either
the accounting or the implementation is wrong: :func:`assert_consistent` raises :class:`EmpiricalBoundViolation`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats


class EmpiricalBoundViolation(AssertionError):
    """An empirical ε lower bound exceeds the ε the accountant claims: the privacy claim is false or mis-computed."""


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P[score(member) > score(non-member)] + ½ P[tie] (Mann–Whitney U / (n₊ n₋))."""
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Largest TPR of a threshold rule "member iff score > τ" whose FPR on `neg` is at most `fpr`."""
    allowed = int(math.floor(fpr * len(neg)))          # false positives the rule may make
    s = np.sort(neg)[::-1]
    tau = s[allowed] if allowed < len(s) else -np.inf  # strictly above the (allowed+1)-th highest non-member
    return float(np.mean(pos > tau))


def membership_inference(member_scores: Sequence[float], nonmember_scores: Sequence[float], *,
                         higher_is_member: bool = True, rng: np.random.Generator, n_bootstrap: int = 1000,
                         confidence: float = 0.95, fprs: Sequence[float] = (0.01, 0.001)) -> dict[str, Any]:
    """Attack metrics with percentile-bootstrap intervals (members and non-members resampled independently).

    Returns ``auc``, ``auc_ci``, and for each FPR f in ``fprs`` ``tpr_at_{f}_fpr`` (keys ``tpr_at_1pct_fpr`` and
    ``tpr_at_0.1pct_fpr`` for the defaults) with ``…_ci``. ``min_resolvable_fpr`` = 1/n_nonmembers: a smaller FPR
    is evaluated as "no false positive at all" and its TPR is then very noisy; read it with its interval.
    """
    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(nonmember_scores, dtype=np.float64)
    if pos.ndim != 1 or neg.ndim != 1 or len(pos) < 2 or len(neg) < 2:
        raise ValueError("need 1-D score arrays with at least 2 members and 2 non-members")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not higher_is_member:
        pos, neg = -pos, -neg

    def key(f: float) -> str:
        return f"tpr_at_{f * 100:g}pct_fpr"

    def metrics(p: np.ndarray, n: np.ndarray) -> dict[str, float]:
        return {"auc": _auc(p, n), **{key(f): _tpr_at_fpr(p, n, f) for f in fprs}}

    point = metrics(pos, neg)
    boot = [metrics(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_bootstrap)]
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    out: dict[str, Any] = {}
    for k, v in point.items():
        vals = np.array([b[k] for b in boot])
        out[k] = v
        out[f"{k}_ci"] = [float(np.percentile(vals, lo)), float(np.percentile(vals, hi))]
    out.update({"n_members": int(len(pos)), "n_nonmembers": int(len(neg)), "confidence": confidence,
                "bootstrap": n_bootstrap, "min_resolvable_fpr": 1.0 / len(neg), "roc": roc_curve(pos, neg)})
    return out


def roc_curve(pos: np.ndarray, neg: np.ndarray, points: int = 40) -> dict[str, list[float]]:
    """TPR at log-spaced FPRs from 1/n_nonmembers to 1 (for a log-log ROC plot; low FPR is what matters)."""
    fprs = np.unique(np.concatenate([np.geomspace(1.0 / len(neg), 1.0, points), [1.0]]))
    return {"fpr": [float(f) for f in fprs], "tpr": [_tpr_at_fpr(pos, neg, float(f)) for f in fprs]}


def canary_inclusion(m: int, *, rng: np.random.Generator) -> np.ndarray:
    """Inclusion signs S ∈ {−1, +1}^m, each +1 (canary inserted) independently with probability ½."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"number of canaries must be an int >= 2, got {m!r}")
    return np.where(rng.random(m) < 0.5, 1, -1).astype(np.int8)


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[W ≥ v] for an (ε, δ)-DP training run (Steinke–Nasr–Jagielski Thm 5.2)."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError("epsilon must be >= 0 and delta in [0, 1]")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, beta)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)      # P[Bin = v−1], P[Bin = v−2], …, P[Bin = 0]
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, beta + 2 * m * delta * alpha)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Largest ε (to 1e-4) with p_value(ε) < significance; 0 when even ε = 0 is not rejected."""
    if not 0 < significance < 1:
        raise ValueError("significance must be in (0, 1)")
    if p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) < significance:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def best_lower_bound(scores: Sequence[float], included: Sequence[int], *, delta: float, confidence: float = 0.95,
                     k_grid: Sequence[int] = (8, 16, 32, 64)) -> dict[str, Any]:
    """ε lower bound of the one-run canary audit at ``confidence`` (probability), maximised over k₊ = k₋ = k.

    ``scores``: one per canary, higher = more likely inserted; ``included``: the true signs (±1).
    ``max_certifiable_epsilon`` is the bound the same test would give if every guess were right: the largest ε
    this audit could ever demonstrate with these m, k and δ.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included)
    m = len(s)
    if inc.shape != s.shape or not set(np.unique(inc).tolist()) <= {-1, 1}:
        raise ValueError("included must hold one ±1 sign per score")
    ks = [int(k) for k in k_grid if 1 <= k and 2 * k <= m]
    if not ks:
        raise ValueError(f"no k in {list(k_grid)} fits m={m} canaries (need 2k <= m)")
    significance = (1 - confidence) / len(ks)
    order = np.argsort(-s, kind="stable")
    per_k, best = [], None
    ceiling = 0.0
    for k in ks:
        v = int(np.sum(inc[order[:k]] == 1) + np.sum(inc[order[-k:]] == -1))
        eps = epsilon_lower_bound(m=m, r=2 * k, v=v, delta=delta, significance=significance)
        ceiling = max(ceiling, epsilon_lower_bound(m=m, r=2 * k, v=2 * k, delta=delta, significance=significance))
        per_k.append({"k": k, "guesses": 2 * k, "correct": v, "epsilon_lower_bound": eps})
        # the best k: the largest bound; among equal bounds the highest fraction of correct guesses
        if best is None or (eps, v / (2 * k)) > (best["epsilon_lower_bound"], best["correct"] / best["guesses"]):
            best = {"epsilon_lower_bound": eps, "k": k, "correct": v, "guesses": 2 * k}
    return {**best, "max_certifiable_epsilon": ceiling, "canaries": m, "delta": delta, "confidence": confidence,
            "bonferroni_tests": len(ks), "per_k": per_k}


def assert_consistent(lower_bound: float, claimed_epsilon: float, *, tolerance: float = 1e-9) -> None:
    """Raise :class:`EmpiricalBoundViolation` if an empirical lower bound exceeds the claimed ε."""
    if lower_bound > claimed_epsilon + tolerance:
        raise EmpiricalBoundViolation(
            f"empirical ε lower bound {lower_bound:.4f} exceeds the accountant's ε {claimed_epsilon:.4f}: the privacy "
            f"claim is not supported (accounting or DP implementation bug)")

"""A privacy statement in words: what is protected, at which ε/δ, by which accountant, and what is not."""

from __future__ import annotations

import math

_UNITS = {
    "example": "one training image",
    "image": "one training image",
    "patient": "all images of one patient",
    "site": "one site (client) and all of its data",
    "client": "one site (client) and all of its data",
}


def _fmt(e: float) -> str:
    return "∞ (no guarantee)" if not math.isfinite(e) else f"{e:.3g}"


def privacy_statement(*, unit: str, epsilons: dict, delta: float, accountant: str, sampling: str = "poisson",
                      mode: str) -> str:
    """Plain-language statement for a report or ledger.

    ``unit``: privacy unit (``example``/``image``/``patient``/``site``/``client`` or free text); ``epsilons``:
    label (e.g. client id) → ε at ``delta``; ``accountant``: ``pld``/``prv``/``rdp``; ``sampling``: ``poisson``
    or anything else (then the statement says the guarantee does not formally apply); ``mode``: e.g.
    ``"sample-level DP-SGD"`` or ``"client-level DP-FedAvg"``.
    """
    if not epsilons:
        raise ValueError("epsilons must name at least one ε")
    who = _UNITS.get(unit, unit)
    items = ", ".join(f"{k}: ε = {_fmt(v)}" for k, v in epsilons.items())
    worst = max(epsilons.values())
    lines = [
        f"Privacy guarantee ({mode}): ({_fmt(worst)}, {delta:.3g})-differential privacy with respect to {who} "
        f"(add/remove-one neighbouring relation: neighbouring datasets differ by adding or removing {who}), "
        f"computed by the {accountant.upper()} accountant from the recorded DP events (noise multiplier, sample "
        f"rate, steps). Per party: {items}. Replacing one unit by another (replace-one) is not what was computed; "
        "its ε is larger (`privfed audit` reports it).",
        f"What is protected: whether {who} was used in training cannot be inferred from the released model(s) "
        f"beyond this (ε, δ) bound, whatever an adversary knows about the rest of the data.",
        "What is not protected: information shared by many units (population statistics, properties of a whole "
        "site unless the unit is the site), data of units that appear more than once under different identities "
        "(e.g. one patient with several images when the unit is an image), anything released outside the "
        "accounted mechanism (hyper-parameter tuning, evaluation metrics, sample grids computed on private data "
        "are covered only as post-processing of the model), and side channels (timing, dropout patterns).",
        "What ε means: every outcome of training is at most e^ε times as likely with the unit as without it "
        "(except with probability δ). ε = 10 allows a factor e^10 ≈ 22,000: it does not rule out that an attacker "
        "tells whether a given unit was used, and it is a worst-case bound, not a measured risk; ε ≤ 1 is "
        "generally considered strong, single-digit ε moderate, ε around 10 weak.",
    ]
    if who == "one training image":
        lines.insert(2, "The unit is an image, not a patient: a patient with several images is protected only by "
                        "group privacy, with an ε that grows with the number of their images (up to k·ε for k).")
    if sampling == "poisson":
        lines.append("Assumption: each unit was included in each step independently with the recorded probability "
                     "(Poisson sampling); the noise was drawn as specified and not seen by anyone else.")
    elif sampling == "none":
        lines.append("Assumption: no sampling amplification is claimed (every unit takes part in every step, sample "
                     "rate 1); the noise was drawn as specified and its honest part not seen by anyone else.")
    else:
        lines.append(f"Warning: sampling was {sampling!r}, not Poisson; the accountant assumes Poisson sampling, so "
                     "this ε is not a formal guarantee for the run as executed.")
    return "\n".join(lines)

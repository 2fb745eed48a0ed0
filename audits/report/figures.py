"""Report figures as PNG bytes (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import io
from typing import Mapping, Sequence


def _fig():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def epsilon_figure(series: Mapping[str, Sequence[tuple[int, float]]], caps: Mapping[str, float | None],
                   delta_label: str) -> bytes:
    """Cumulative ε per site against round, with each site's cap as a dashed line of the same colour."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (client, pts) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        ax.plot([r for r, _ in pts], [e for _, e in pts], marker="o", color=color, label=client)
        cap = caps.get(client)
        if cap is not None:
            ax.axhline(cap, color=color, linestyle="--", linewidth=1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative ε ({delta_label})")
    ax.set_title("Privacy loss per site (recomputed; dashed: cap)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def metric_figure(points: Sequence[tuple[float, float]], *, ylabel: str, title: str) -> bytes:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot([r for r, _ in points], [v for _, v in points], marker="o")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def roc_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """Membership-inference ROC curves on log-log axes (Carlini et al. 2022): the low-FPR corner is the risk.

    ``curves`` maps "<model> <what was attacked>" names to {"fpr": [...], "tpr": [...]}; one colour per attacked
    target, solid for the non-private control, dashed for the audited run and the DP helper run.
    """
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    models = {"non private control": "non-private control", "audited model": "audited run", "dp model": "DP model"}
    groups: list[str] = []
    lo = 1.0
    for name, c in curves.items():
        model = next((m for m in models if name.startswith(m)), "")
        target = name[len(model):].strip() or "training images"
        if target not in groups:
            groups.append(target)
        control = model == "non private control"
        fpr, tpr = list(c["fpr"]), [max(t, 1e-4) for t in c["tpr"]]
        lo = min(lo, fpr[0])
        ax.plot(fpr, tpr, color=f"C{groups.index(target) % 10}", linewidth=1.8 if control else 1.4,
                linestyle="-" if control else "--",
                label=f"{models.get(model, name)}: {target}")
    ax.plot([lo, 1], [lo, 1], color="grey", linewidth=1, linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1.3)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("Membership inference ROC (log-log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)

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


MAX_LABELLED_SITES = 12


def epsilon_figure(series: Mapping[str, Sequence[tuple[int, float]]], caps: Mapping[str, float | None],
                   delta_label: str) -> bytes:
    """Cumulative ε per site against round, from round 0 (ε = 0). Up to MAX_LABELLED_SITES sites: one line per
    site, labelled at its end (no legend to decode); more: the min–max band, the median, and the two extreme sites
    labelled. The caps are one dashed line each (labelled once when they coincide)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(7.0, 3.3))
    items = sorted(series.items(), key=lambda kv: (0, int(kv[0])) if str(kv[0]).isdigit() else (1, kv[0]))
    last_round = max((r for _, pts in items for r, _ in pts), default=0)
    if len(items) <= MAX_LABELLED_SITES:
        ends = []
        for i, (client, pts) in enumerate(items):
            color = f"C{i % 10}"
            ls = "-" if i < 10 else "--"
            ax.plot([r for r, _ in pts], [e for _, e in pts], color=color, linestyle=ls, linewidth=1.3,
                    marker="o", markersize=2.5)
            ends.append((pts[-1][1], pts[-1][0], f"site {client}", color))
        # direct labels right of the plot, in the order of the lines' ends, spread apart so that they never
        # overlap (sites ending at the same ε get a leader line each)
        ends.sort()
        top = max(max(e for _, e in pts) for _, pts in items)
        top = max([top] + [c for c in caps.values() if c is not None])
        ax.set_ylim(0, top * 1.08 if top > 0 else 1)
        lo, hi = ax.get_ylim()
        gap = (hi - lo) * 0.075
        placed: list[float] = []
        for y, *_ in ends:
            placed.append(max(y, placed[-1] + gap) if placed else y)
        shift = max(0.0, placed[-1] - hi) if placed else 0.0
        placed = [p - shift for p in placed]
        for i in range(len(placed) - 2, -1, -1):   # pushed down by the clamp: keep the spacing below too
            placed[i] = min(placed[i], placed[i + 1] - gap)
        for (y, x, label, color), y_l in zip(ends, placed):
            ax.annotate(label, xy=(x, y), xytext=(1.02, (y_l - lo) / (hi - lo)), textcoords="axes fraction",
                        fontsize=7, color=color, va="center", annotation_clip=False,
                        arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.5, "shrinkA": 0,
                                    "shrinkB": 0})
    else:
        rounds = sorted({r for _, pts in items for r, _ in pts})
        by = {c: dict(pts) for c, pts in items}
        lo_v = [min(by[c].get(r, float("nan")) for c in by) for r in rounds]
        hi_v = [max(by[c].get(r, float("-inf")) for c in by) for r in rounds]
        import statistics
        med = [statistics.median(v for c in by if (v := by[c].get(r)) is not None) for r in rounds]
        ax.fill_between(rounds, lo_v, hi_v, color="C0", alpha=0.25, label=f"all {len(items)} sites (min–max)")
        ax.plot(rounds, med, color="C0", linewidth=1.5, label="median site")
        top = max(items, key=lambda kv: kv[1][-1][1])
        bottom = min(items, key=lambda kv: kv[1][-1][1])
        for (client, pts), color in ((top, "C3"), (bottom, "C2")):
            ax.plot([r for r, _ in pts], [e for _, e in pts], color=color, linewidth=1, linestyle="--",
                    label=f"site {client}")
        ax.legend(fontsize=7, loc="upper left")
    seen = set()
    for client, _ in items:
        cap = caps.get(client)
        if cap is not None and cap not in seen:
            seen.add(cap)
            ax.axhline(cap, color="0.3", linestyle=":", linewidth=1)
            ax.annotate(f"cap {cap:g}", xy=(0, cap), xytext=(2, 2), textcoords="offset points", fontsize=7,
                        color="0.3", va="bottom")
    ax.set_xlim(0, last_round + 0.2)
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round (0 = before any site data)")
    ax.set_ylabel(f"cumulative ε ({delta_label})")
    ax.set_title("Privacy loss per site, recomputed by this audit (dotted: cap)", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def metric_figure(points: Sequence[tuple[float, float]], *, ylabel: str, title: str) -> bytes:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
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

"""``SWEEP_DIR/summary.html``: the sweep's figures and tables, self-contained (figures inlined as PNG; copies in
``SWEEP_DIR/figures/``)."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from privfed.rundir import atomic_write_bytes, atomic_write_text  # noqa: E402
from privfed.sweep.spec import SEED_KEY, Sweep  # noqa: E402
from privfed.sweep.results import mixed_extractors, start_label  # noqa: E402

_NUMERIC_AXES = {"fed.clients": "sites N", "data.alpha": "Dirichlet α (label skew; larger = closer to IID)",
                 "fed.local_epochs": "local epochs E", "fed.per_round": "sites per round",
                 "fed.rounds": "rounds", "dp.noise_multiplicity": "noise multiplicity K",
                 "dp.public_subspace": "public subspace rank k"}


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def _save(fig, out: Path, name: str) -> str:
    path = out / "figures" / f"{name}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _err(g: dict[str, Any]) -> tuple[float, float]:
    lo, hi = g["fid_lo"], g["fid_hi"]
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return 0.0, 0.0
    return max(g["fid"] - lo, 0.0), max(hi - g["fid"], 0.0)


def common_start(groups: list[dict[str, Any]]) -> float | None:
    """The round-0 FID the groups share, or None when they start from different models (or none is known):
    averaging different starts into one reference line would misplace every group's."""
    pubs = [g["fid_public_only"] for g in groups if g["fid_public_only"] is not None]
    if pubs and len(pubs) == len(groups) and max(pubs) - min(pubs) <= 1e-6 * max(1.0, abs(max(pubs))):
        return pubs[0]
    return None


def _groups_bar(groups: list[dict[str, Any]], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) + 2), 3.8))
    xs = range(len(groups))
    errs = list(zip(*[_err(g) for g in groups])) if groups else [[], []]
    colors = ["#888" if g["dp_mode"] == "off" else "#3465a4" for g in groups]
    ax.bar(xs, [g["fid"] for g in groups], yerr=errs, capsize=4, color=colors)
    common = common_start(groups)
    starts = [(x, g["fid_public_only"]) for x, g in zip(xs, groups) if g["fid_public_only"] is not None]
    if common is not None:
        ax.axhline(common, color="#c00", ls="--", lw=1, label=f"{start_label(groups)} (round 0)")
        ax.legend(loc="best", fontsize=8)
    elif starts:
        # the groups start from different models (e.g. another UNet width): one mark per bar, not an average
        ax.hlines([y for _, y in starts], [x - 0.4 for x, _ in starts], [x + 0.4 for x, _ in starts], color="#c00",
                  ls="--", lw=1.2, label=f"{start_label(groups)} (round 0, each group's own)")
        # room above the highest mark and bar for the legend, so that it hides no mark
        top = max([y for _, y in starts] + [g["fid"] + _err(g)[1] for g in groups])
        ax.set_ylim(0, top * 1.25)
        ax.legend(loc="upper center", fontsize=8)
    ax.set_xticks(list(xs), [g["label"] for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("domain-FID (lower is better)")
    ax.set_title("Final FID per group (bars: 95 % interval; grey: non-private)")
    return _save(fig, out, "fid_by_group")


def _series_key(g: dict[str, Any], axis: str, varying: set[str]) -> str:
    """The series a group belongs to on a plot along `axis`: its variant and the other settings that vary among
    the groups on that axis (a point shared by several [[grid]] tables carries every table's settings)."""
    row = g["_rows"][0]
    parts = [g["variant"]] if g["variant"] else []
    parts += [f"{k.split('.')[-1]}={row[f'set:{k}']}" for k in sorted(varying) if f"set:{k}" in row]
    return ",".join(parts) or "all"


def _varying(groups: list[dict[str, Any]], axis: str) -> set[str]:
    """Settings that vary within a variant among these groups (a variant's own keys are named by the variant)."""
    values: dict[tuple[str, str], set] = {}
    for g in groups:
        for k, v in g["_rows"][0].items():
            if k.startswith("set:") and k not in (f"set:{axis}", "set:seed"):
                values.setdefault((g["variant"], k[4:]), set()).add(repr(v))
    return {k for (_, k), vs in values.items() if len(vs) > 1}


def epsilon_axis_label(groups: list[dict[str, Any]]) -> str:
    """ε's unit on a figure: per example (DP-SGD), per site (DP-FedAvg), or both named when a sweep mixes them."""
    modes = {g["dp_mode"] for g in groups if g.get("dp_mode") not in (None, "off")}
    if modes == {"client"}:
        return "ε (per site, target)"
    if "client" in modes:
        return "ε (target; per example for DP-SGD, per site for DP-FedAvg: not comparable)"
    return "ε (per example, target)"


def _spans_decades(values: list[float]) -> bool:
    """True when the values run over more than a factor of 10 (a linear axis would flatten the smaller ones)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return bool(v) and min(v) > 0 and max(v) / min(v) > 10


def _along(groups: list[dict[str, Any]], axis: str, out: Path, *, log: bool = False) -> str | None:
    key = f"set:{axis}"
    pts = [g for g in groups if key in g["_rows"][0]]
    values = {g["_rows"][0][key] for g in pts}
    if len(values) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    series: dict[str, list[dict[str, Any]]] = {}
    flat = []
    finite = [v for v in values if v != "inf"]
    varying = _varying(pts, axis)
    for g in pts:
        (flat if g["_rows"][0][key] == "inf" else series.setdefault(_series_key(g, axis, varying), [])).append(g)
    colors = {}
    for name, gs in series.items():
        gs.sort(key=lambda g: g["_rows"][0][key])
        xs = [g["_rows"][0][key] for g in gs]
        line = ax.errorbar(xs, [g["fid"] for g in gs], yerr=list(zip(*[_err(g) for g in gs])), marker="o",
                           capsize=3, label=name)
        colors[name] = line[0].get_color()
    for g in flat:
        # the level a series reaches without DP (ε = ∞), in the series' colour, with its interval as a band
        name = _series_key(g, axis, varying)
        color = colors.get(name, "#555")
        ax.axhline(g["fid"], color=color, ls="--", lw=1, label=f"{name}: non-private")
        lo, hi = g["fid_lo"], g["fid_hi"]
        if lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
            ax.axhspan(lo, hi, color=color, alpha=0.08)
    common = common_start(pts)
    if common is not None:
        ax.axhline(common, color="#c00", ls=":", lw=1, label=start_label(pts))
    elif any(g["fid_public_only"] is not None for g in pts):
        starts = [g for g in pts if g["fid_public_only"] is not None and g["_rows"][0][key] != "inf"]
        ax.scatter([g["_rows"][0][key] for g in starts], [g["fid_public_only"] for g in starts], marker="x",
                   color="#c00", label=f"{start_label(pts)} (each point's own)")
    if log and finite and min(finite) > 0:
        ax.set_xscale("log")
    # decided on the marks themselves: an interval's lower end can be 0 (clamped), which a log axis cuts off
    if _spans_decades([y for g in pts for y in (g["fid"], g["fid_public_only"])]):
        ax.set_yscale("log")
    ax.set_xlabel(epsilon_axis_label(pts) if axis == "dp.target_epsilon" else _NUMERIC_AXES.get(axis, axis))
    ax.set_ylabel("domain-FID (lower is better)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the axes: it hides no mark
    ax.set_title(f"FID vs {axis} (95 % intervals)")
    return _save(fig, out, f"fid_vs_{axis.replace('.', '_')}")


def _curves(groups: list[dict[str, Any]], out: Path, which: str, ylabel: str, name: str) -> str | None:
    lines = [(g["label"], g["_rows"][0][which]) for g in groups if g["_rows"][0].get(which)]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, pts in lines:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    if which == "_curve_fid" and _spans_decades([p[1] for _, pts in lines for p in pts]):
        ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{ylabel} per round (first seed of each group)")
    return _save(fig, out, name)


def write_summary(sweep: Sweep, out: Path, rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> Path:
    """Write summary.html; returns its path."""
    figs: list[tuple[str, str]] = []
    if groups:
        figs.append(("Final FID per group", _groups_bar(groups, out)))
        for axis in [k for k in sweep.grid_keys if k != SEED_KEY]:
            numeric = all(isinstance(r.get(f"set:{axis}"), (int, float)) or r.get(f"set:{axis}") == "inf"
                          for r in rows if f"set:{axis}" in r)
            if numeric:
                b64 = _along(groups, axis, out, log=axis in ("dp.target_epsilon", "data.alpha"))
                if b64:
                    figs.append((f"FID vs {axis}", b64))
        for which, ylabel, name in (("_curve_fid", "domain-FID", "fid_per_round"),
                                    ("_curve_fid_val", "domain-FID on the validation split", "fid_val_per_round"),
                                    ("_curve_epsilon", "ε (largest over sites)", "epsilon_per_round")):
            b64 = _curves(groups, out, which, ylabel, name)
            if b64:
                figs.append((f"{ylabel} per round", b64))
    done = sum(r["status"] == "done" for r in rows)
    parts = [f"<h1>Sweep {html.escape(sweep.name)}</h1>",
             f"<p>{done} of {len(rows)} points done; source <code>{html.escape(str(sweep.source))}</code>. Every "
             "point is a run directory under <code>runs/</code> with its own signed ledger: verify any of them with "
             "<code>privfed audit RUN_DIR</code>.</p>",
             "<h2>Groups (repeats over seeds)</h2>",
             "<p>FID: mean over seeds with a 95 % Student-t interval (one seed: the bootstrap interval over the "
             "generated samples). <i>vs best</i>: FID minus the best group's of the same context (same data, "
             "federation, model and public start), paired by seed, with its 95 % interval and the paired t-test's "
             "p (two or more seeds in common). <b>≈</b> marks a group whose difference from the best is inside the "
             "noise: the paired interval contains 0 (without two common seeds: the two FID intervals overlap). "
             "<i>Gain recovered</i> = (FID<sub>public</sub> − FID) / (FID<sub>public</sub> − FID<sub>non-private"
             "</sub>), paired by seed.</p>",
             _group_table(groups), *_extractor_warning(rows, groups), "<h2>Figures</h2>"]
    for title, b64 in figs:
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    parts.append("<h2>Samples (final round, first seed of each group)</h2><div class='grids'>")
    for g in groups:
        grid = g["_rows"][0].get("sample_grid")
        if grid and Path(grid).is_file():
            b64 = base64.b64encode(Path(grid).read_bytes()).decode()
            parts.append(f"<figure><img class='grid' alt='samples' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(g['label'])}<br>seed {g['_rows'][0]['seed']}: FID "
                         f"{_fmt(g['_rows'][0]['fid'])}</figcaption></figure>")
    parts.append("</div><h2>Points</h2>" + _point_table(rows))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>privfed sweep "
            f"{html.escape(sweep.name)}</title><style>{_CSS}</style></head><body>" + "\n".join(parts)
            + "</body></html>")
    path = out / "summary.html"
    atomic_write_text(path, page)
    return path


def _extractor_warning(rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[str]:
    mixed = mixed_extractors(rows)
    if not mixed:
        return []
    labels = sorted({g["label"] for g in groups if g["_context"] in mixed})
    return [f"<p class='warn'><b>Different feature extractors.</b> FIDs of {len(labels)} group(s) "
            f"({html.escape(', '.join(labels))}) were measured with {max(len(v) for v in mixed.values())} different "
            "FID feature extractors (runs started before the extractor was shared across seeds, or on another "
            "machine's cache; column <code>fid_extractor</code> of the points table): their differences include the "
            "extractors' own spread, beyond the intervals shown.</p>"]


def _vs_best(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}], p {d['p']:.2g}"


def _group_table(groups: list[dict[str, Any]]) -> str:
    head = ("<table><tr><th>group</th><th>seeds</th><th>FID</th><th>95 % interval</th><th>round 0</th>"
            "<th>vs best (paired)</th><th>gain recovered</th><th>ε</th><th>placement</th><th>s / run</th></tr>")
    body = []
    for g in sorted(groups, key=lambda g: (g["_context"], g["fid"])):
        peers = sum(h["_context"] == g["_context"] for h in groups)
        mark = " <b>best</b>" if g["best_in_context"] and peers > 1 else (" <b>≈</b>" if g["within_noise_of_best"]
                                                                          else "")
        share = "–" if g["share"] is None else (f"{100 * g['share']:.0f} %" + (
            "" if g["share_lo"] is None or math.isnan(g["share_lo"])
            else f" [{100 * g['share_lo']:.0f}, {100 * g['share_hi']:.0f}]"))
        body.append(f"<tr><td>{_fmt(g['label'])}</td><td>{g['seeds']}</td><td>{_fmt(g['fid'])}{mark}</td>"
                    f"<td>[{_fmt(g['fid_lo'])}, {_fmt(g['fid_hi'])}]</td><td>{_fmt(g['fid_public_only'])}</td>"
                    f"<td>{_vs_best(g.get('vs_best'))}</td><td>{share}</td><td>{_fmt(g['epsilon'], 2)}</td>"
                    f"<td>{_fmt(g['placement'])}</td>"
                    f"<td>{_fmt(g['seconds'], 0)}{'†' if g.get('reused') else ''}</td></tr>")
    foot = ("<p class='note'>† includes runs copied from another sweep (<code>--reuse-from</code>; column "
            "<code>reused_from</code> of the points table): their seconds were measured there, perhaps on another "
            "machine or beside other work.</p>") if any(g.get("reused") for g in groups) else ""
    return head + "".join(body) + "</table>" + foot


def _point_table(rows: list[dict[str, Any]]) -> str:
    cols = ("label", "status", "seed", "rounds_completed", "epsilon", "fid_public_only", "fid", "fid_lo", "fid_hi",
            "eval_loss", "fid_val", "best_round_val", "seconds", "reused_from", "fid_extractor", "error")
    if all(r.get("fid_val") is None for r in rows):      # no validation split anywhere: no empty columns
        cols = tuple(c for c in cols if c not in ("fid_val", "best_round_val"))
    if all(r.get("reused_from") is None for r in rows):
        cols = tuple(c for c in cols if c != "reused_from")
    head = "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    digits = {"epsilon": 2, "eval_loss": 4, "best_round_val": 0}
    return head + "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c), digits.get(c, 1))}</td>" for c in cols)
                          + "</tr>" for r in rows) + "</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5em}img{max-width:100%}
p.warn{background:#fff4e0;padding:.5em}p.note{font-size:12px;color:#555}img.grid{width:220px;image-rendering:pixelated}figcaption{font-size:12px;color:#555;text-align:center}"""

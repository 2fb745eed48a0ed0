"""A sweep file (``privfed sweep SWEEP.toml``): a base configuration, a grid of config keys, and named variants.

.. code-block:: toml

    [sweep]
    name = "privacy-utility"           # optional; the folder name under --out defaults to the file's stem
    base_config = "my-config.toml"     # optional: a run config file (relative to the sweep file)

    [base]                             # optional: config tables, as in config.toml
    eval_every = 5
    [base.fed]
    rounds = 15

    [grid]                             # every combination of these dotted config keys; several [[grid]] tables
    seed = [0, 1, 2]                   # give the union of their points (one axis at a time)
    "dp.target_epsilon" = [1, 4, 16, "inf"]     # "inf": DP off (the non-private point of a privacy–utility curve)

    [[variant]]                        # each grid point runs once per variant; a variant's keys win over the grid's
    name = "local DP-SGD"
    "dp.placement" = "local"
    [[variant]]
    name = "centralized"               # one site holding all the training data, same rounds and local epochs
    centralized = true

Two derived keys: ``fed.per_round`` (sites per round; sets ``fed.fraction = per_round / fed.clients``) and
``centralized``. Points whose resolved configurations are equal run once (e.g. the non-private variant crossed with
several ε); each point is an ordinary run directory with its own signed ledger.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from privfed.config import RunConfig, read_toml
from privfed.errors import ConfigError

DERIVED_KEYS = ("fed.per_round", "centralized")
#: the grid/variant keys that do not go into the summary's "what changed" columns
SEED_KEY = "seed"


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its label, the settings that made it, and its resolved configuration."""

    slug: str                         # folder name under SWEEP_DIR/runs/
    label: str                        # "variant,key=value,..." as the summary shows it
    variant: str                      # the variant's name ("" when the sweep has none)
    settings: dict[str, Any]          # grid and variant keys as written (ε "inf" kept as math.inf)
    config: RunConfig
    also: list[str] = field(default_factory=list)    # labels of points with the same configuration

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.config.to_toml().encode()).hexdigest()

    @property
    def group_label(self) -> str:
        """The label without the seed: what the point's group of repeats is called."""
        return ",".join(x for x in self.label.split(",") if not x.startswith("seed=")) or "base"

    @property
    def group(self) -> tuple:
        """What the point is, apart from its seed: points of one group are repeats."""
        return (self.variant, tuple((k, _hashable(v)) for k, v in sorted(self.settings.items()) if k != SEED_KEY))


@dataclass(frozen=True)
class Sweep:
    name: str
    source: Path
    points: list[Point]
    grid_keys: list[str]
    variants: list[str]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _set_key(raw: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    if not all(parts) or len(parts) > 2:
        raise ConfigError(f"{where}: {dotted!r} is not a config key (write 'seed' or 'section.key', "
                          "e.g. 'fed.clients')")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {dotted!r}: {p} is not a config table")
        node = nxt
    node[parts[-1]] = value


def _apply(raw: dict[str, Any], settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Config tables with the point's settings applied (derived keys resolved last)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in settings.items():
        if key in DERIVED_KEYS:
            continue
        if key == "dp.target_epsilon" and isinstance(value, float) and math.isinf(value):
            continue
        _set_key(out, key, value, where)
    eps = settings.get("dp.target_epsilon")
    if isinstance(eps, float) and math.isinf(eps):
        _set_key(out, "dp.mode", "off", where)          # ε = ∞: the non-private point, whatever else is set
    if out.get("dp", {}).get("mode") == "off":
        # non-private: ε keys cannot matter; dropping them makes every non-private point one configuration
        for k in ("target_epsilon", "placement", "noise_multiplier", "max_epsilon", "noise_multiplicity", "delta",
                  "public_subspace"):
            out["dp"].pop(k, None)
    if settings.get("centralized"):
        # one site holding every training image (no aggregation to protect: secure aggregation off)
        _set_key(out, "fed.clients", 1, where)
        _set_key(out, "fed.fraction", 1.0, where)
        _set_key(out, "fed.min_clients", 1, where)
        _set_key(out, "secure_agg.mode", "off", where)
        if out.get("dp", {}).get("placement") == "distributed":
            out["dp"]["placement"] = "local"
    if "fed.per_round" in settings and not settings.get("centralized"):
        per, n = settings["fed.per_round"], out.get("fed", {}).get("clients", RunConfig().fed.clients)
        if not isinstance(per, int) or not 1 <= per <= n:
            raise ConfigError(f"{where}: fed.per_round must be an integer in [1, fed.clients={n}]; got {per!r}")
        _set_key(out, "fed.fraction", per / n, where)
    return out


def _value(v: Any, key: str, where: str) -> Any:
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "∞"):
        if key != "dp.target_epsilon":
            raise ConfigError(f"{where}: {key} = {v!r}: 'inf' is only meaningful for dp.target_epsilon (DP off)")
        return math.inf
    return v


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-").lower() or "point"


def _label(variant: str, settings: Mapping[str, Any], grid_keys: list[str]) -> str:
    parts = [variant] if variant else []
    for k in grid_keys:
        v = settings[k]
        parts.append(f"{k.split('.')[-1]}={'inf' if isinstance(v, float) and math.isinf(v) else v}")
    return ",".join(parts) or "base"


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file: every point's configuration is built (and checked) before anything runs.
    Raises ConfigError naming the point and the key on any bad input."""
    p = Path(path)
    raw = read_toml(p, "sweep file")
    unknown = sorted(set(raw) - {"sweep", "base", "grid", "variant"})
    if unknown:
        raise ConfigError(f"{p}: unknown table [{unknown[0]}]; a sweep file has [sweep], [base], [grid] and "
                          f"[[variant]]")
    meta = raw.get("sweep", {})
    bad = sorted(set(meta) - {"name", "base_config", "description"})
    if bad:
        raise ConfigError(f"{p}: unknown key sweep.{bad[0]} (known: name, base_config, description)")
    base: dict[str, Any] = {}
    if meta.get("base_config"):
        base_path = (p.parent / meta["base_config"]).resolve()
        base = RunConfig.from_toml(base_path).to_dict(resolved=False)   # unset keys follow each point's placement
    for k, v in raw.get("base", {}).items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    RunConfig.from_dict(base)              # the base alone must be a valid configuration
    grids = raw.get("grid", {})
    grids = grids if isinstance(grids, list) else [grids]
    for grid in grids:
        for k, vs in grid.items():
            if not isinstance(vs, list) or not vs:
                raise ConfigError(f"{p}: grid key {k!r} needs a non-empty list of values; got {vs!r}")
    grid_keys = list(dict.fromkeys(k for grid in grids for k in grid))
    variants = raw.get("variant", [{}])
    if not isinstance(variants, list):
        raise ConfigError(f"{p}: write variants as [[variant]] tables")
    names: list[str] = []
    for i, var in enumerate(variants):
        name = var.get("name", "" if len(variants) == 1 else f"variant {i + 1}")
        if not isinstance(name, str):
            raise ConfigError(f"{p}: variant {i + 1}: name must be text")
        if name in names:
            raise ConfigError(f"{p}: two variants are named {name!r}")
        names.append(name)
    points: list[Point] = []
    by_hash: dict[str, Point] = {}
    for var, vname in zip(variants, names):
        vset = {k: _value(v, k, f"{p} variant {vname!r}") for k, v in var.items() if k != "name"}
        for grid, combo in ((g, c) for g in grids
                            for c in itertools.product(*[[_value(v, k, f"{p} [grid]") for v in g[k]] for k in g])):
            keys = list(grid)
            settings = {**dict(zip(keys, combo)), **vset}
            label = _label(vname, {**settings, **dict(zip(keys, combo))}, keys)
            where = f"{p}: point {label!r}"
            try:
                cfg = RunConfig.from_dict(_apply(base, settings, where))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            point = Point(slug=_slug(label), label=label, variant=vname, settings=settings, config=cfg)
            twin = by_hash.get(point.config_hash)
            if twin is not None:
                # the same run reached from another grid: it is a point on that grid's axes too
                twin.also.append(label)
                for k, v in settings.items():
                    twin.settings.setdefault(k, v)
                continue
            by_hash[point.config_hash] = point
            points.append(point)
    slugs = [pt.slug for pt in points]
    dup = next((s for s in slugs if slugs.count(s) > 1), None)
    if dup:
        raise ConfigError(f"{p}: two points map to the folder name {dup!r}; give the variants distinct names")
    return Sweep(name=meta.get("name") or p.stem, source=p, points=points, grid_keys=grid_keys, variants=names)


def _clause_value(text: str) -> Any:
    """A --only value as TOML would read it (10, 0.5, true, "inf"), else the text itself (a variant's name)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _point_value(point: Point, key: str) -> Any:
    if key == "variant":
        return point.variant
    if key in point.settings:
        return point.settings[key]
    if key in DERIVED_KEYS:
        return False if key == "centralized" else None
    if key == SEED_KEY:
        return point.config.seed
    section, name = key.split(".")
    return getattr(getattr(point.config, section), name)


def _matches(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    if isinstance(have, (int, float)) and isinstance(want, (int, float)):
        return float(have) == float(want)
    return have == want


def select_points(sweep: Sweep, clauses: list[str] | tuple[str, ...]) -> list[Point]:
    """The points that ``--only KEY=VALUE`` clauses select: a point is selected when, for every key named, its value
    equals one of the values given for that key (the same key repeated means "or", different keys "and"). KEY is
    ``variant``, ``seed``, a dotted config key (``fed.clients``) or a grid key's last part (``clients``); a key
    that is not a grid key is compared with the point's resolved configuration (so ``local_epochs=2`` also selects
    the points of other axes that run at E = 2). Raises ConfigError on a malformed clause, an unknown key or a
    selection that is empty."""
    if not clauses:
        return list(sweep.points)
    short = {}
    for k in sweep.grid_keys:
        short.setdefault(k.split(".")[-1], []).append(k)
    wanted: dict[str, list[Any]] = {}
    for clause in clauses:
        key, sep, text = clause.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ConfigError(f"--only {clause!r}: write KEY=VALUE (e.g. --only seed=0, --only clients=30, "
                              "--only variant=FedAvg)")
        if key not in ("variant", SEED_KEY) and "." not in key and key not in DERIVED_KEYS:
            if len(short.get(key, [])) != 1:
                known = ", ".join(sorted({*short, "variant", SEED_KEY}))
                raise ConfigError(f"--only {clause!r}: {key!r} is not a grid key of this sweep (known: {known}; "
                                  "or write a dotted config key such as fed.clients)")
            key = short[key][0]
        if "." in key:
            section, _, name = key.partition(".")
            if key not in DERIVED_KEYS and not hasattr(getattr(RunConfig(), section, None), name):
                raise ConfigError(f"--only {clause!r}: {key!r} is not a config key")
        value = text if key == "variant" else _value(_clause_value(text), key, f"--only {clause!r}")
        wanted.setdefault(key, []).append(value)
    chosen = [p for p in sweep.points
              if all(any(_matches(_point_value(p, k), v) for v in vs) for k, vs in wanted.items())]
    if not chosen:
        raise ConfigError(f"--only {' '.join(clauses)}: no point of the sweep matches")
    return chosen

"""A site's pinned policy (``SITE_DIR/site.toml``): what the site accepts, whatever the server asks.

The server cannot lower any of these: a round whose instructions break the policy is refused by the site with
:class:`~privfed.errors.PolicyViolation` (recorded by the site in its receipt and by the server in the ledger),
and the secure-aggregation minimums are checked again by the protocol itself (``secure_agg.ProtocolPolicy``) at
the setup stage, against the setup every site signs.

Example::

    [site]
    id = 3

    [policy]
    max_epsilon = 10.0                 # this site's ε cap (its own accountant; unit: one image, or one site)
    max_delta = 1e-5                   # the largest δ the site accepts
    min_clients = 3                    # smallest round (sites in the secure-aggregation setup) it joins
    min_threshold = 2                  # smallest Shamir threshold t it accepts
    max_colluders = 0                  # n_C: colluding sites tolerated against an active server
    min_degree = 0                     # smallest SecAgg+ degree (0: the protocol's own bound)
    failure_log2 = 40                  # SecAgg+ graph failure probability it accepts: at most 2^-40
    require_secure_aggregation = true  # refuse rounds that would upload its update in the clear
    server_key = "sha256:…"            # fingerprint of the only server key whose instructions it follows
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from privfed.config import read_toml
from privfed.errors import ConfigError, PolicyViolation
from privfed.rundir import atomic_write_text

POLICY_FILE = "site.toml"


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """A site's own limits (frozen, type-checked). See the module docstring for the meaning of each field."""

    site_id: int
    max_epsilon: float = 10.0
    max_delta: float = 1e-5
    min_clients: int = 3
    min_threshold: int = 2
    max_colluders: int = 0
    min_degree: int = 0
    failure_log2: int = 40
    require_secure_aggregation: bool = True
    server_key: str = ""

    def __post_init__(self) -> None:
        ints = ("site_id", "min_clients", "min_threshold", "max_colluders", "min_degree", "failure_log2")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"site policy {name} must be a non-negative integer; got {v!r}")
        for name in ("max_epsilon", "max_delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"site policy {name} must be a positive number; got {v!r}")
        if self.max_delta >= 1:
            raise ConfigError(f"site policy max_delta must be < 1; got {self.max_delta!r}")
        if self.min_clients < 2:
            raise ConfigError("site policy min_clients must be >= 2")
        if not isinstance(self.require_secure_aggregation, bool):
            raise ConfigError("site policy require_secure_aggregation must be true or false")
        if not isinstance(self.server_key, str):
            raise ConfigError("site policy server_key must be a key fingerprint string")

    # -- the checks a site runs on instructions ------------------------------------------------------------
    def check_offer(self, *, aggregation: str, participants: int, delta: float | None, server_key: str) -> None:
        """Raise PolicyViolation when a round offer breaks this policy (before anything is trained)."""
        if self.server_key and server_key != self.server_key:
            raise PolicyViolation(f"site {self.site_id}: instructions signed by server key {server_key}, "
                                  f"not the pinned {self.server_key}")
        if aggregation == "off" and self.require_secure_aggregation:
            raise PolicyViolation(f"site {self.site_id}: the round would upload this site's update in the clear "
                                  "(secure aggregation off) and its policy requires secure aggregation")
        if aggregation != "off" and participants < self.min_clients:
            raise PolicyViolation(f"site {self.site_id}: a round of {participants} site(s) is below this site's "
                                  f"minimum of {self.min_clients}")
        if delta is not None and delta > self.max_delta:
            raise PolicyViolation(f"site {self.site_id}: δ = {delta:.3g} exceeds this site's max_delta "
                                  f"{self.max_delta:.3g}")

    def cap(self, run_cap: float | None) -> float:
        """The ε cap the site enforces: the stricter of its own and the run's."""
        return self.max_epsilon if run_cap is None else min(self.max_epsilon, float(run_cap))

    # -- file ------------------------------------------------------------------------------------------------
    def to_toml(self) -> str:
        body = {k: v for k, v in dataclasses.asdict(self).items() if k != "site_id"}
        return tomli_w.dumps({"site": {"id": self.site_id}, "policy": body})

    def save(self, site_dir: str | Path) -> Path:
        path = Path(site_dir) / POLICY_FILE
        atomic_write_text(path, self.to_toml())
        return path

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = POLICY_FILE) -> "SitePolicy":
        if set(raw) - {"site", "policy"} or not isinstance(raw.get("site"), Mapping):
            raise ConfigError(f"{where}: expected tables [site] and [policy]")
        site = dict(raw["site"])
        if set(site) != {"id"}:
            raise ConfigError(f"{where}: [site] must hold exactly `id`")
        pol = dict(raw.get("policy", {}))
        known = {f.name for f in dataclasses.fields(cls)} - {"site_id"}
        unknown = set(pol) - known
        if unknown:
            raise ConfigError(f"{where}: unknown policy key(s): {', '.join(sorted(unknown))}")
        return cls(site_id=site["id"], **pol)

    @classmethod
    def load(cls, site_dir: str | Path) -> "SitePolicy":
        path = Path(site_dir) / POLICY_FILE
        raw = read_toml(path, "site policy", missing_hint=" (create it with `privfed site init`)")
        return cls.from_dict(raw, str(path))

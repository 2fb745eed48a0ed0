"""Cross-check each site's verified receipt against the server's verified ledger.

A receipt is signed by the site, the ledger by the server: neither can rewrite the other. For every site with a
receipt, :func:`cross_check` requires

* the site is on the ledger's ``roster``, the receipt's public key is the roster's key for that site, and the
  receipt's ``roster_fingerprint`` is the roster's fingerprint (and ``run_id`` matches run_start's, when the ledger
  records one; a ``server_key`` fingerprint in the site's pinned policy must be the ledger key);
* round by round, the site's ``dp_spend`` events equal the ledger's ``dp_event`` records for that client: the same
  typed event (type, σ, q, steps) and unit, as many times, and no round on one side that the other lacks;
The first disagreement raises :class:`~audits.errors.ReceiptMismatch` naming the site and the round. On success it
returns one :class:`SiteCrossCheck` per roster site (sites without a receipt are listed as not cross-checked: on a
multi-machine run the receipt stays with the site), with ``notes``: refusals that only one side records. Those are
findings, not failures: a site also refuses (and records) messages the server never sent (forged or foreign ones),
and a refusal spends no privacy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping

from audits.accounting import IndependentAccountant, parse_event
from audits.canonical import canonical_bytes
from audits.errors import ReceiptMismatch
from audits.keys import key_fingerprint, public_key_from_hex
from audits.receipt import VerifiedReceipt
from audits.roster import roster_from_records


@dataclass(frozen=True)
class SiteCrossCheck:
    site: str
    key_fingerprint: str
    receipt_verified: bool          # False: no receipt was available for this site
    rounds: tuple[int, ...]         # rounds with DP events (ledger side)
    ledger_epsilon: float | None    # recomputed from the ledger's dp_events for this client
    ledger_delta: float | None
    receipt_epsilon: float | None   # recomputed from the site's dp_spend events
    receipt_delta: float | None
    status: str                     # "consistent" | "no receipt"
    notes: tuple[str, ...] = ()     # findings that do not fail the check (refusals recorded by one side only)


def _fmt_event(e: Mapping[str, Any], unit: str) -> str:
    parts = ", ".join(f"{k}={e[k]}" for k in sorted(e) if k != "type")
    return f"{e.get('type')}({parts}; unit={unit})"


def _key(e: Mapping[str, Any], unit: str) -> bytes:
    return canonical_bytes({"event": dict(e), "unit": unit})


def _ledger_side(records) -> tuple[dict, dict, dict, dict]:
    events: dict[str, dict[int, list[tuple[int, dict[str, Any], str]]]] = defaultdict(lambda: defaultdict(list))
    eps: dict[str, IndependentAccountant] = {}
    delta: dict[str, float] = {}
    refused: dict[str, dict[int, int]] = defaultdict(dict)
    for i, r in enumerate(records):
        p = r["payload"]
        if r["kind"] == "dp_event":
            c = p["client"]
            events[c][p["round"]].append((i, p["event"], p["unit"]))
            acc = eps.get(c) or eps.setdefault(c, IndependentAccountant(accountant=p["accountant"]))
            acc.compose(parse_event(p["event"]))
            delta[c] = p["delta"]
        elif r["kind"] == "site_event" and p["event"] == "refused":
            refused[p["client"]].setdefault(p["round"], i)
    return events, eps, delta, refused


def _compare_rounds(site: str, ledger: Mapping[int, list], receipt: Mapping[int, list]) -> None:
    for rnd in sorted(set(ledger) | set(receipt)):
        led, rec = ledger.get(rnd, []), receipt.get(rnd, [])
        if not rec:
            i, e, u = led[0]
            raise ReceiptMismatch(f"the ledger records a DP event {_fmt_event(e, u)} that the site's receipt lacks",
                                  site=site, round=rnd, record_index=i, kind="dp_event")
        if not led:
            j, e, u = rec[0]
            raise ReceiptMismatch(f"the site's receipt (record {j}) records a DP spend {_fmt_event(e, u)} that the "
                                  "ledger lacks", site=site, round=rnd)
        if sorted(_key(e, u) for _, e, u in led) != sorted(_key(e, u) for _, e, u in rec):
            i = led[0][0]
            ledger_txt = "; ".join(_fmt_event(e, u) for _, e, u in led)
            receipt_txt = "; ".join(_fmt_event(e, u) for _, e, u in rec)
            raise ReceiptMismatch(f"the ledger's DP events [{ledger_txt}] differ from the site's receipt "
                                  f"[{receipt_txt}]", site=site, round=rnd, record_index=i, kind="dp_event")


def cross_check(ledger_records: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                receipts: Mapping[str, VerifiedReceipt], *,
                ledger_key_fingerprint: str | None = None) -> list[SiteCrossCheck]:
    """Cross-check verified ``receipts`` (site id → :class:`~audits.receipt.VerifiedReceipt`) against verified
    ``ledger_records`` (see module docstring). ``ledger_key_fingerprint``: the key that signed the ledger (checked
    against roster.server_key; None skips that check). Raises ReceiptMismatch / RosterError; returns one row per
    roster site."""
    records = tuple(ledger_records)
    roster = roster_from_records(records, ledger_key_fingerprint=ledger_key_fingerprint)
    if roster is None:
        site = next(iter(receipts), "?")
        raise ReceiptMismatch("the ledger has no roster record, so no receipt can be bound to it", site=site)
    events, eps, delta, refused = _ledger_side(records)
    starts = [r["payload"] for r in records if r["kind"] == "run_start"]
    run_id = starts[0].get("run_id") if starts else None
    for site, rc in sorted(receipts.items()):
        if rc.site != site:
            raise ReceiptMismatch(f"the receipt given for this site is site {rc.site!r}'s", site=site)
        if site not in roster.sites:
            raise ReceiptMismatch(f"has a receipt but is not on the ledger's roster ({sorted(roster.sites)})",
                                  site=site, record_index=roster.record_index, kind="roster")
        if rc.public_key != roster.sites[site]:
            raise ReceiptMismatch(f"the receipt is signed by key {rc.public_key}, the roster names "
                                  f"{roster.sites[site]}", site=site, record_index=roster.record_index, kind="roster")
        if rc.roster_fingerprint != roster.fingerprint:
            raise ReceiptMismatch(f"the site pinned roster {rc.roster_fingerprint}, the ledger's roster is "
                                  f"{roster.fingerprint}", site=site, record_index=roster.record_index, kind="roster")
        if isinstance(run_id, str) and rc.run_id != run_id:
            raise ReceiptMismatch(f"the receipt is for run {rc.run_id!r}, the ledger's run is {run_id!r}", site=site)
        pinned = rc.policy.get("server_key") if isinstance(rc.policy, Mapping) else None
        if isinstance(pinned, str) and pinned.startswith("sha256:") and pinned != roster.server_key:
            raise ReceiptMismatch(f"the site pinned server key {pinned}, the ledger is signed by {roster.server_key}",
                                  site=site, record_index=roster.record_index, kind="roster")
        _compare_rounds(site, events.get(site, {}), rc.events_by_round())
    notes: dict[str, list[str]] = defaultdict(list)
    for site, rc in sorted(receipts.items()):
        site_refused = {p["round"]: (j, p["error"]) for j, p in rc.refusals}
        for rnd in sorted(set(site_refused) | set(refused.get(site, {}))):
            if rnd not in refused.get(site, {}):
                j, err = site_refused[rnd]
                notes[site].append(f"site {site}, round {rnd}: the receipt records a refusal ({err}, record {j}) "
                                   "that the ledger does not (a message the server did not send, or a hidden "
                                   "refusal)")
            elif rnd not in site_refused:
                notes[site].append(f"site {site}, round {rnd}: the ledger records a refusal (record "
                                   f"{refused[site][rnd]}) that the site's receipt does not")
    rows = []
    for site in sorted(roster.sites):
        rc = receipts.get(site)
        acc = eps.get(site)
        rows.append(SiteCrossCheck(
            site=site, key_fingerprint=key_fingerprint(public_key_from_hex(roster.sites[site])),
            receipt_verified=rc is not None, rounds=tuple(sorted(events.get(site, {}))),
            ledger_epsilon=None if acc is None else acc.epsilon(delta=delta[site]),
            ledger_delta=delta.get(site), receipt_epsilon=None if rc is None else rc.final_epsilon,
            receipt_delta=None if rc is None else rc.final_delta,
            status="consistent" if rc is not None else "no receipt", notes=tuple(notes.get(site, ()))))
    return rows

"""Per-site privacy receipts: the site's own signed chain, its verification, and the cross-check with the ledger.

Attacks, one test each: a changed byte, another key, reordered or deleted records, the server forging a σ in its
ledger (and re-signing it) while the site's receipt keeps the true σ, a round missing on either side, a receipt bound
to another roster, a refusal the server hid.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits.accounting import GaussianEvent, epsilon_for_events
from audits.canonical import canonical_bytes, sha256_hex
from audits.chain import signed_message, verify_chain
from audits.cross_check import cross_check
from audits.errors import (EpsilonMismatchError, LedgerBusyError, LedgerIntegrityError, LedgerKeyError,
                           ReceiptIntegrityError, ReceiptMismatch, RecordSchemaError, RosterError, UnknownEventType)
from audits.keys import (PRIVATE_KEY_RELPATH, PUBLIC_KEY_RELPATH, generate_private_key, key_fingerprint,
                         load_private_key, load_public_key, public_key_hex)
from audits.ledger import LedgerWriter
from audits.ledger_schema import LEDGER
from audits.log_spec import GENESIS_PREV_HASH
from audits.receipt import (RECEIPT, ReceiptWriter, load_site_private_key, load_site_public_key, read_receipt,
                            verify_receipt)
from audits.verify import cli_verify, verify_run

from .conftest import CLIENTS, DELTA, ROUNDS, RUN_ID, gaussian, run_epsilon


# ------------------------------------------------------------------------------------------------------ helpers
def _lines(path):
    return path.read_bytes().splitlines(keepends=True)


def _receipt(run, site):
    return run / "sites" / site / "receipt.jsonl"


def _rewrite(path, records, key, spec):
    """Re-chain and re-sign ``records`` (payloads possibly edited) with ``key``: what a key holder can do."""
    prev, out = GENESIS_PREV_HASH, []
    for i, rec in enumerate(records):
        rec = {k: v for k, v in rec.items() if k != "signature"}
        rec["seq"], rec["prev_hash"] = i, prev
        rec["signature"] = key.sign(signed_message(rec, spec)).hex()
        line = canonical_bytes(rec)
        prev = sha256_hex(line)
        out.append(line + b"\n")
    path.write_bytes(b"".join(out))


def _ledger_records(run):
    return [json.loads(x) for x in _lines(run / "ledger.jsonl")]


def _forge_ledger(run, edit):
    """The server (holder of keys/ledger.key) edits its ledger records and re-signs the whole chain."""
    records = _ledger_records(run)
    edit(records)
    _rewrite(run / "ledger.jsonl", records, load_private_key(run / PRIVATE_KEY_RELPATH), LEDGER)


def _verified(run):
    rep = verify_run(run, check_receipts=False)
    receipts = {c: verify_receipt(run / "sites" / c, public_key=load_site_public_key(run / "sites" / c),
                                  expected_site=c) for c in CLIENTS}
    return rep.records, receipts


def _new_receipt(tmp_path, key=None, site="s1"):
    key = key or generate_private_key(tmp_path / site / "identity.key")
    w = ReceiptWriter.open(tmp_path / site, create=True, key=key)
    w.append("receipt_start", {"site": site, "run_id": "r", "roster_fingerprint": "ab" * 32,
                               "public_key": public_key_hex(key.public_key()), "policy": {}})
    return w, key


def _spend(rnd, eps, sigma=1.0):
    return {"round": rnd, "unit": "example", "delta": DELTA, "accountant": "pld", "epsilon": eps,
            "event": {"type": "gaussian", "noise_multiplier": sigma, "sample_rate": 0.01, "steps": 10}}


# ------------------------------------------------------------------------------------------------------ consistent
def test_consistent_ledger_and_receipts_verify_side_by_side(pristine_site_run, capsys):
    rep = verify_run(pristine_site_run, require_complete=True)
    assert rep.roster_fingerprint is not None and [r.site for r in rep.receipts] == sorted(CLIENTS)
    for row in rep.receipts:
        assert row.receipt_verified and row.status == "consistent" and row.rounds == tuple(range(1, ROUNDS + 1))
        assert row.ledger_epsilon == pytest.approx(row.receipt_epsilon) == pytest.approx(run_epsilon(row.site, ROUNDS),
                                                                                           rel=1e-3)
        pub = load_site_public_key(pristine_site_run / "sites" / row.site)
        assert row.key_fingerprint == key_fingerprint(pub)
    assert rep.kinds["roster"] == 1 and rep.kinds["site_event"] == 1
    assert cli_verify(pristine_site_run) == 0
    out = capsys.readouterr().out
    assert all(f"site {c}: receipt verified and consistent" in out for c in CLIENTS)


def test_verify_receipt_reports_the_sites_own_spend(pristine_site_run):
    d = pristine_site_run / "sites" / "site-a"
    rc = verify_receipt(d, public_key=public_key_hex(load_site_public_key(d)), expected_site="site-a")
    assert rc.site == "site-a" and rc.run_id == RUN_ID and len(rc.spends) == ROUNDS and rc.final_delta == DELTA
    assert [s.event for s in rc.spends] == [gaussian("site-a")] * ROUNDS
    assert rc.final_epsilon == pytest.approx(run_epsilon("site-a", ROUNDS), rel=1e-3)
    assert [r["kind"] for r in read_receipt(d, public_key=load_site_public_key(d))] == \
        ["receipt_start"] + ["dp_spend"] * ROUNDS


# ------------------------------------------------------------------------------------------------------ the writer
def test_writer_signs_with_the_site_key_under_its_own_context(tmp_path):
    w, key = _new_receipt(tmp_path)
    w.append("dp_spend", _spend(1, epsilon_for_events([GaussianEvent(1.0, 0.01, 10)], delta=DELTA)))
    w.close()
    data = (tmp_path / "s1" / "receipt.jsonl").read_bytes()
    assert verify_chain(data, key.public_key(), spec=RECEIPT).records[-1]["kind"] == "dp_spend"
    with pytest.raises(LedgerIntegrityError, match="signature"):  # a receipt is not a ledger: contexts differ
        verify_chain(data, key.public_key(), spec=LEDGER)
    assert RECEIPT.signing_context != LEDGER.signing_context
    assert load_site_public_key(tmp_path / "s1").public_bytes_raw() == key.public_key().public_bytes_raw()
    assert load_site_private_key(tmp_path / "s1").public_key().public_bytes_raw() == \
        key.public_key().public_bytes_raw()


def test_writer_rules(tmp_path):
    w, key = _new_receipt(tmp_path)
    with pytest.raises(LedgerBusyError):
        ReceiptWriter.open(tmp_path / "s1", create=False, key=key)
    with pytest.raises(RecordSchemaError, match="already recorded"):
        w.append("receipt_start", {"site": "s1", "run_id": "r", "roster_fingerprint": "ab" * 32,
                                   "public_key": public_key_hex(key.public_key()), "policy": {}})
    with pytest.raises(UnknownEventType):
        w.append("dp_spend", {**_spend(1, 1.0), "event": {"type": "laplace", "scale": 1.0}})
    with pytest.raises(RecordSchemaError):
        w.append("dp_spend", {**_spend(1, 1.0), "accountant": "moments"})
    w.close()
    with pytest.raises(FileExistsError):
        ReceiptWriter.open(tmp_path / "s1", create=True, key=key)
    other = generate_private_key(tmp_path / "other.key")
    with pytest.raises(LedgerKeyError):  # identity.pub pins the site key
        ReceiptWriter.open(tmp_path / "s1", create=False, key=other)
    w2 = ReceiptWriter.open(tmp_path / "s2", create=True, key=other)
    with pytest.raises(RecordSchemaError, match="first record"):
        w2.append("dp_spend", _spend(1, 1.0))
    with pytest.raises(RecordSchemaError, match="public_key"):
        w2.append("receipt_start", {"site": "s2", "run_id": "r", "roster_fingerprint": "ab" * 32,
                                    "public_key": public_key_hex(key.public_key()), "policy": {}})
    w2.close()


def test_torn_tail_is_repaired_and_resume_continues(tmp_path):
    w, key = _new_receipt(tmp_path)
    e1 = epsilon_for_events([GaussianEvent(1.0, 0.01, 10)], delta=DELTA)
    w.append("dp_spend", _spend(1, e1))
    w.close()
    path = tmp_path / "s1" / "receipt.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"kind":"dp_sp')
    with pytest.raises(ReceiptIntegrityError, match="torn"):
        verify_receipt(tmp_path / "s1", public_key=key.public_key())
    assert len(read_receipt(tmp_path / "s1", public_key=key.public_key())) == 2  # the site's own resume view
    with ReceiptWriter.open(tmp_path / "s1", create=False, key=key) as w:
        assert w.repaired["kind"] == "receipt_repair" and w.repaired["payload"]["truncated_bytes"] == 14
        w.append("receipt_resume", {"from_round": 2})
        w.append("dp_spend", _spend(2, epsilon_for_events([GaussianEvent(1.0, 0.01, 10)] * 2, delta=DELTA)))
    rc = verify_receipt(tmp_path / "s1", public_key=key.public_key())
    assert rc.repairs == (2,) and [s.round for s in rc.spends] == [1, 2]


# ------------------------------------------------------------------------------------------------------ attacks
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_in_a_receipt_breaks_it_at_that_record(pristine_site_run, data):
    path = _receipt(pristine_site_run, "site-b")
    lines = _lines(path)
    pub = load_site_public_key(path.parent)
    i = data.draw(st.integers(0, len(lines) - 1), label="record")
    pos = data.draw(st.integers(0, len(lines[i]) - 1), label="byte")
    line = bytearray(lines[i])
    line[pos] ^= data.draw(st.integers(1, 255), label="xor")
    blob = b"".join(lines[:i]) + bytes(line) + b"".join(lines[i + 1:])
    with pytest.raises(ReceiptIntegrityError) as ei:
        verify_chain(blob, pub, spec=RECEIPT)
    assert ei.value.record_index == i


def test_changed_byte_on_disk_fails_verify_run_naming_the_site(site_run, capsys):
    path = _receipt(site_run, "site-b")
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"noise_multiplier":0.9', b'"noise_multiplier":1.9')
    path.write_bytes(b"".join(lines))
    with pytest.raises(ReceiptIntegrityError) as ei:
        verify_run(site_run)
    assert ei.value.record_index == 2 and "site site-b" in str(ei.value) and "signature" in ei.value.reason
    assert cli_verify(site_run) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ReceiptIntegrityError" in err and "site-b" in err


def test_receipt_signed_by_another_key_fails(site_run, tmp_path):
    path = _receipt(site_run, "site-b")
    mallory = generate_private_key(tmp_path / "mallory.key")
    records = [json.loads(x) for x in _lines(path)]
    _rewrite(path, records, mallory, RECEIPT)  # same contents, same claimed public key, another signer
    with pytest.raises(ReceiptIntegrityError) as ei:
        verify_run(site_run)
    assert ei.value.record_index == 0 and "site-b" in str(ei.value)
    records[0]["payload"]["public_key"] = public_key_hex(mallory.public_key())  # now claiming mallory's key too
    _rewrite(path, records, mallory, RECEIPT)
    with pytest.raises(ReceiptIntegrityError):  # verified under the roster's key for site-b: still fails
        verify_run(site_run)


@pytest.mark.parametrize("a,b", [(0, 1), (1, 3)])
def test_reordered_receipt_records_fail(site_run, a, b):
    path = _receipt(site_run, "site-a")
    lines = _lines(path)
    lines[a], lines[b] = lines[b], lines[a]
    path.write_bytes(b"".join(lines))
    with pytest.raises(ReceiptIntegrityError) as ei:
        verify_run(site_run)
    assert ei.value.record_index == a


def test_server_forging_sigma_in_its_ledger_is_caught_by_the_sites_receipt(site_run):
    """The server claims site-b's last round had σ=1.5 (less ε spent), re-signs its ledger, and keeps every ε in it
    consistent with the forged event; the site's receipt still says σ=0.9."""
    forged = {**gaussian("site-b"), "noise_multiplier": 1.5}
    true = GaussianEvent(*CLIENTS["site-b"])
    eps = epsilon_for_events([true] * (ROUNDS - 1) + [GaussianEvent(1.5, true.sample_rate, true.steps)], delta=DELTA)

    def edit(records):
        for r in records:
            p = r["payload"]
            if r["kind"] == "dp_event" and p["client"] == "site-b" and p["round"] == ROUNDS:
                p["event"], p["epsilon"] = forged, eps
            if r["kind"] == "run_end":
                p["final_epsilon"]["site-b"] = eps
    _forge_ledger(site_run, edit)
    verify_run(site_run, check_receipts=False)  # the forged ledger on its own verifies: signatures, chain, ε
    with pytest.raises(ReceiptMismatch) as ei:
        verify_run(site_run)
    e = ei.value
    assert e.site == "site-b" and e.round == ROUNDS and e.kind == "dp_event"
    assert "noise_multiplier=1.5" in str(e) and "noise_multiplier=0.9" in str(e)
    assert cli_verify(site_run) == 1


def test_forged_sigma_direct_cross_check(pristine_site_run):
    records, receipts = _verified(pristine_site_run)
    assert [r.status for r in cross_check(records, receipts)] == ["consistent"] * len(CLIENTS)
    records = json.loads(json.dumps(records))
    rec = next(r for r in records if r["kind"] == "dp_event" and r["payload"]["client"] == "site-a"
               and r["payload"]["round"] == 2)
    rec["payload"]["event"]["noise_multiplier"] = 2.0
    with pytest.raises(ReceiptMismatch) as ei:
        cross_check(records, receipts)
    assert (ei.value.site, ei.value.round) == ("site-a", 2)


def test_round_missing_from_the_receipt_fails(site_run):
    path = _receipt(site_run, "site-c")
    path.write_bytes(b"".join(_lines(path)[:-1]))  # a valid prefix: the site's last spend is gone
    with pytest.raises(ReceiptMismatch, match="receipt lacks") as ei:
        verify_run(site_run)
    assert (ei.value.site, ei.value.round) == ("site-c", ROUNDS)


def test_round_missing_from_the_ledger_fails(pristine_site_run):
    records, receipts = _verified(pristine_site_run)
    records = [r for r in records if not (r["kind"] == "dp_event" and r["payload"]["client"] == "site-a"
                                          and r["payload"]["round"] == 1)]
    with pytest.raises(ReceiptMismatch, match="ledger lacks") as ei:
        cross_check(records, receipts)
    assert (ei.value.site, ei.value.round) == ("site-a", 1)


def test_receipt_bound_to_another_roster_or_run_or_server_fails(pristine_site_run):
    records, receipts = _verified(pristine_site_run)
    for change, match in [({"roster_fingerprint": "cd" * 32}, "pinned roster"), ({"run_id": "other"}, "run"),
                          ({"policy": {"server_key": "sha256:" + "0" * 64}}, "server key"),
                          ({"public_key": "ef" * 32}, "signed by key")]:
        bad = {**receipts, "site-b": dataclasses.replace(receipts["site-b"], **change)}
        with pytest.raises(ReceiptMismatch, match=match) as ei:
            cross_check(records, bad)
        assert ei.value.site == "site-b"


def test_receipt_of_a_site_not_on_the_roster_fails(site_run):
    shutil.copytree(site_run / "sites" / "site-a", site_run / "sites" / "site-z")
    with pytest.raises(ReceiptMismatch, match="not on the ledger's roster") as ei:
        verify_run(site_run)
    assert ei.value.site == "site-z"


def test_refusal_only_the_site_records_is_a_warning_not_a_failure(site_run):
    """A site also refuses messages the server never sent (forged, foreign): no spend, so a finding, not a failure."""
    d = site_run / "sites" / "site-a"
    with ReceiptWriter.open(d, create=False, key=load_site_private_key(d)) as w:
        w.append("refusal", {"round": ROUNDS + 1, "error": "PolicyViolation", "reason": "threshold below policy"})
    rep = verify_run(site_run)
    row = next(r for r in rep.receipts if r.site == "site-a")
    assert row.status == "consistent" and len(row.notes) == 1 and f"round {ROUNDS + 1}" in row.notes[0]
    assert row.notes[0] in rep.warnings and "PolicyViolation" in row.notes[0]


def test_receipt_epsilon_misreported_by_the_site_fails(tmp_path):
    w, key = _new_receipt(tmp_path)
    w.append("dp_spend", _spend(1, 1.1 * epsilon_for_events([GaussianEvent(1.0, 0.01, 10)], delta=DELTA)))
    w.close()
    with pytest.raises(EpsilonMismatchError) as ei:
        verify_receipt(tmp_path / "s1", public_key=key.public_key())
    assert ei.value.record_index == 1 and "receipt of site s1" in str(ei.value)


def test_unknown_event_type_in_a_signed_receipt_is_named(tmp_path):
    w, key = _new_receipt(tmp_path)
    w.close()
    path = tmp_path / "s1" / "receipt.jsonl"
    records = [json.loads(x) for x in _lines(path)]
    records.append({"schema_version": 1, "kind": "dp_spend", "utc": records[0]["utc"],
                    "payload": {**_spend(1, 0.5), "event": {"type": "laplace", "scale": 1.0}}})
    _rewrite(path, records, key, RECEIPT)
    with pytest.raises(UnknownEventType) as ei:
        verify_receipt(tmp_path / "s1", public_key=key.public_key())
    assert ei.value.record_index == 1 and "laplace" in ei.value.reason


# ------------------------------------------------------------------------------------------------------ roster
def test_roster_must_hash_to_its_fingerprint_and_name_the_ledger_key(site_run):
    def bad_fp(records):
        next(r for r in records if r["kind"] == "roster")["payload"]["fingerprint"] = "ab" * 32
    _forge_ledger(site_run, bad_fp)
    with pytest.raises(RosterError, match="fingerprint"):
        verify_run(site_run)


def test_roster_server_key_must_be_the_ledger_key(site_run):
    def bad_key(records):
        next(r for r in records if r["kind"] == "roster")["payload"]["server_key"] = "sha256:" + "0" * 64
    _forge_ledger(site_run, bad_key)
    with pytest.raises(RosterError, match="server key"):
        verify_run(site_run)


def test_roster_written_right_after_run_start_only(tmp_path):
    start = {"config_hash": "0" * 64, "config": {}, "versions": {}, "hardware": {}, "dp_mode": "sample",
             "secure_agg_mode": "off"}
    with LedgerWriter.open(tmp_path / "r", create=True) as led:
        led.append("run_start", start)
        led.append("data_summary", {"suppression_threshold": 5, "clients": {}})
        with pytest.raises(RecordSchemaError, match="right after run_start"):
            led.append("roster", {"fingerprint": "ab" * 32, "sites": {"0": "cd" * 32},
                                  "server_key": led.key_fingerprint})


def test_receipts_without_a_roster_are_flagged_not_trusted(pristine_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine_run, run)
    _new_receipt(run / "sites", site="site-a")[0].close()
    rep = verify_run(run)
    assert rep.roster_fingerprint is None and rep.receipts == ()
    assert any("no roster record" in w for w in rep.warnings)


def test_ledger_pub_is_not_a_site_key(pristine_site_run):
    led_pub = load_public_key(pristine_site_run / PUBLIC_KEY_RELPATH)
    with pytest.raises(ReceiptIntegrityError):
        verify_receipt(pristine_site_run / "sites" / "site-a", public_key=led_pub)


def test_prv_receipts_are_checked_with_pld(tmp_path):
    w, key = _new_receipt(tmp_path)
    w.append("dp_spend", {**_spend(1, epsilon_for_events([GaussianEvent(1.0, 0.01, 10)], delta=DELTA)),
                          "accountant": "prv"})
    w.close()
    assert verify_receipt(tmp_path / "s1", public_key=key.public_key()).spends[0].accountant == "prv"


def test_a_receipt_record_without_its_signature_is_a_receipt_integrity_error(pristine_site_run):
    """The byte flip hypothesis found ("signature" -> "signaturd"): still a ReceiptIntegrityError at that record."""
    from audits.errors import UnsignedRecordError

    path = _receipt(pristine_site_run, "site-b")
    lines = _lines(path)
    blob = b"".join(lines[:1]) + lines[1].replace(b'"signature":', b'"signaturd":') + b"".join(lines[2:])
    with pytest.raises(ReceiptIntegrityError) as ei:
        verify_chain(blob, load_site_public_key(path.parent), spec=RECEIPT)
    assert isinstance(ei.value, UnsignedRecordError) and ei.value.record_index == 1

"""LedgerWriter: keys, append-only signed chain, payload guard, schema per kind, torn-tail repair."""

from __future__ import annotations

import json
import stat

import pytest

from audits.canonical import canonical_bytes, parse_canonical
from audits.errors import (ForbiddenPayloadError, IncompleteRunDirectory, LedgerBusyError, LedgerIntegrityError,
                           LedgerKeyError, MissingRunDirectory, RecordSchemaError, SmallCellError, UnknownEventType)
from audits.ledger import LedgerWriter
from audits.payload_guard import check_payload
from audits.verify import verify_run

START = {"config_hash": "0" * 64, "config": {"seed": 1}, "versions": {}, "hardware": {}, "dp_mode": "off",
         "secure_agg_mode": "off"}


def test_new_ledger_keys_and_canonical_lines(tmp_path):
    with LedgerWriter.open(tmp_path / "r", create=True) as led:
        rec = led.append("run_start", START)
        assert rec["seq"] == 0 and rec["prev_hash"] == "0" * 64 and len(rec["signature"]) == 128
        assert led.key_fingerprint.startswith("sha256:")
    key = tmp_path / "r" / "keys" / "ledger.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "r" / "keys" / "ledger.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    line = (tmp_path / "r" / "ledger.jsonl").read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_canonical(line[:-1]) == rec and canonical_bytes(rec) == line[:-1]


def test_create_refuses_existing_and_resume_requires_ledger(tmp_path):
    LedgerWriter.open(tmp_path / "r", create=True).close()
    with pytest.raises(FileExistsError):
        LedgerWriter.open(tmp_path / "r", create=True)
    with pytest.raises(MissingRunDirectory):
        LedgerWriter.open(tmp_path / "nope", create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IncompleteRunDirectory):
        LedgerWriter.open(tmp_path / "empty", create=False)


def test_resume_continues_chain_and_single_writer(tmp_path):
    run = tmp_path / "r"
    with LedgerWriter.open(run, create=True) as led:
        led.append("run_start", START)
        head = led.head_hash
        with pytest.raises(LedgerBusyError):
            LedgerWriter.open(run, create=False)
    with LedgerWriter.open(run, create=False) as led:
        assert led.next_seq == 1 and led.head_hash == head
        assert led.append("resume", {"from_round": 1})["prev_hash"] == head


def test_private_key_permissions_and_user_key_path(tmp_path):
    run = tmp_path / "r"
    LedgerWriter.open(run, create=True, key_path=tmp_path / "elsewhere.key").close()
    assert not (run / "keys" / "ledger.key").exists()
    with pytest.raises(LedgerKeyError):  # default path has no key
        LedgerWriter.open(run, create=False)
    (tmp_path / "elsewhere.key").chmod(0o644)
    with pytest.raises(LedgerKeyError, match="0600"):
        LedgerWriter.open(run, create=False, key_path=tmp_path / "elsewhere.key")


def test_torn_final_line_is_truncated_and_noted(tmp_path):
    run = tmp_path / "r"
    with LedgerWriter.open(run, create=True) as led:
        led.append("run_start", START)
        led.append("round_start", {"round": 1, "selected": ["a", "b"]})
    path = run / "ledger.jsonl"
    whole = path.read_bytes()
    torn = b'{"kind":"round_end","payload":{"rou'
    path.write_bytes(whole + torn)
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run, check_artifacts=False)
    assert ei.value.record_index == 2 and "torn" in ei.value.reason
    with LedgerWriter.open(run, create=False) as led:
        assert led.repaired["kind"] == "ledger_repair" and led.repaired["seq"] == 2
        assert led.repaired["payload"]["truncated_bytes"] == len(torn)
    data = path.read_bytes()
    assert data.startswith(whole) and torn not in data
    rep = verify_run(run, check_artifacts=False)
    assert rep.repairs == (2,) and any("repaired" in w for w in rep.warnings)


def test_damage_other_than_a_torn_tail_is_not_repaired(tmp_path):
    run = tmp_path / "r"
    with LedgerWriter.open(run, create=True) as led:
        led.append("run_start", START)
        led.append("round_start", {"round": 1, "selected": ["a"]})
    path = run / "ledger.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"round":1', b'"round":2'))
    with pytest.raises(LedgerIntegrityError) as ei:
        LedgerWriter.open(run, create=False)
    assert ei.value.record_index == 1


@pytest.mark.parametrize("payload", [
    {"round": 1, "transcript": {"mode": "pairwise", "shares": ["00"]}},
    {"round": 1, "transcript": {"clients": [{"maskSeed": "ab"}]}},
    {"round": 1, "transcript": {"private_key": "x"}},
    {"round": 1, "transcript": {"gradient": [0.1]}},
    {"round": 1, "transcript": {"update_vector": [0.1]}},
    {"round": 1, "transcript": {"image": "..."}},
    {"round": 1, "transcript": {"seed": 7}},
    {"round": 1, "transcript": {"note": "-----BEGIN PRIVATE KEY-----\nMC4C"}},
])
def test_denylisted_payload_keys_rejected(tmp_path, payload):
    with LedgerWriter.open(tmp_path / "r", create=True) as led:
        led.append("run_start", START)
        with pytest.raises(ForbiddenPayloadError):
            led.append("secure_agg", payload)
        assert led.next_seq == 1  # nothing written


def test_guard_allows_lookalike_names_and_config_seed():
    check_payload("run_start", {"config": {"seed": 3, "data": {"image_size": 28}, "dp": {"max_grad_norm": 1.0,
                                                                                        "grad_sample_mode": "x"}}})
    with pytest.raises(ForbiddenPayloadError):
        check_payload("round_end", {"metrics": {"seed": 3}})


def test_schema_per_kind_and_order_enforced(tmp_path):
    with LedgerWriter.open(tmp_path / "r", create=True) as led:
        with pytest.raises(RecordSchemaError, match="first record"):
            led.append("round_start", {"round": 1, "selected": []})
        led.append("run_start", START)
        with pytest.raises(RecordSchemaError, match="noise_multiplier") as ei:
            led.append("dp_event", {"round": 1, "client": "a", "unit": "example", "event": {
                "type": "gaussian", "sample_rate": 0.1, "steps": 1}, "delta": 1e-5, "max_grad_norm": 1.0,
                "accountant": "pld", "epsilon": 1.0})
        assert not isinstance(ei.value, UnknownEventType)
        for event in ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1},            # untyped
                      {"type": "laplace", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1}):
            with pytest.raises(UnknownEventType, match="type"):
                led.append("dp_event", {"round": 1, "client": "a", "unit": "example", "event": event,
                                        "delta": 1e-5, "max_grad_norm": 1.0, "accountant": "pld", "epsilon": 1.0})
        with pytest.raises(RecordSchemaError, match="unknown record kind"):
            led.append("gossip", {})
        with pytest.raises(SmallCellError):
            led.append("data_summary", {"suppression_threshold": 5,
                                        "clients": {"a": {"n": 3, "label_counts": {}}}})
        with pytest.raises(ValueError):
            led.append("round_end", {"round": 1, "checkpoint": None, "metrics": {"fid": float("nan")}})
        led.append("run_end", {"rounds_completed": 0, "final_epsilon": {}, "delta": None})
        with pytest.raises(RecordSchemaError, match="ended"):
            led.append("resume", {"from_round": 0})
    lines = (tmp_path / "r" / "ledger.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["run_start", "run_end"]

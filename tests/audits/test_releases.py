"""The release inventory (audits/releases.py) as data: classes, precedence, --dp off, walking (no run needed)."""

import json

import pytest

from audits import releases as R


def test_every_entry_has_a_class_a_reason_and_a_table_row():
    for where, entries in R.INVENTORY.items():
        assert entries, where
        for e in entries:
            assert e.where == where and e.status in R.CLASSES and e.reveals.strip() and e.group.strip()


@pytest.mark.parametrize("path,status", [
    ("checkpoints/round_0000/unet/diffusion_pytorch_model.safetensors", R.PUBLIC),   # public pretraining only
    ("samples/round_0000.png", R.PUBLIC),
    ("checkpoints/round_0003/unet/diffusion_pytorch_model.safetensors", R.ACCOUNTED),
    ("samples/round_0015.png", R.ACCOUNTED),
    ("cache/domain_classifier.safetensors", R.DECLARED),
    ("keys/ledger.key", R.PUBLIC),
    ("report/empirical.json", R.DECLARED),
    ("report/empirical_runs/control/checkpoints/round_0001/unet/x.safetensors", R.UNACCOUNTED),
])
def test_files_are_classified_specific_entries_first(path, status):
    assert R.classify("file", path).status == status


@pytest.mark.parametrize("where,path,status", [
    ("ledger", "data_summary.clients.3.label_counts.7", R.DECLARED),
    ("ledger", "dp_event.event.sample_rate", R.DECLARED),         # n = batch / q
    ("ledger", "dp_event.event.noise_multiplier", R.ACCOUNTED),
    ("ledger", "round_start.selected", R.DECLARED),                # participation
    ("ledger", "secure_agg.transcript.survivors", R.DECLARED),
    ("ledger", "secure_agg.transcript.setup_hash", R.PUBLIC),
    ("ledger", "run_start.config.dp.target_epsilon", R.PUBLIC),
    ("ledger", "run_start.evaluation.feature_extractor.sha256", R.DECLARED),
    ("ledger", "round_end.metrics.fid", R.DECLARED),
    ("ledger", "round_end.metrics.epsilon_max", R.ACCOUNTED),
    ("metrics", "eval_loss", R.DECLARED),
])
def test_fields_are_classified(where, path, status):
    assert R.classify(where, path).status == status


def test_the_sites_training_loss_is_unaccounted_and_unknown_values_are_not_in_the_inventory():
    # the plain training loss of private batches is no release any more: a ledger written before issue 15 that
    # carries it shows it as unaccounted (report section 15 and page 1); unknown values are unlisted
    assert R.classify("ledger", "round_end.metrics.loss").status == R.UNACCOUNTED
    assert R.classify("metrics", "loss").status == R.UNACCOUNTED
    assert R.classify("ledger", "run_start.some_new_field") is None
    assert R.classify("file", "dump.npy") is None


def test_nothing_is_accounted_without_dp():
    rel = R.classify("file", "checkpoints/round_0002/unet/x.safetensors", dp_mode="off")
    assert rel.status == R.DECLARED and rel.reveals.startswith("no differential privacy")
    assert R.classify("ledger", "data_summary.clients.0.n", dp_mode="off").status == R.DECLARED
    assert R.classify("ledger", "roster.fingerprint", dp_mode="off").status == R.PUBLIC


def test_field_paths_descend_maps_not_lists_and_stop_at_depth():
    obj = {"a": {"b": [1, 2], "c": {"d": {"e": {"f": 1}}}}, "g": {}}
    assert R.field_paths(obj, "k", depth=3) == {"k.a.b", "k.a.c.d", "k.g"}
    recs = [{"seq": 0, "utc": "x", "kind": "run_start", "payload": {"dp_mode": "off"}}]
    assert R.record_paths(recs) == {"record.seq", "record.utc", "run_start.dp_mode"}
    assert R.dp_mode_of(recs) == "off"


def test_walk_finds_unlisted_files_and_fields(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "round_0001").mkdir(parents=True)
    (run / "checkpoints" / "round_0001" / "privfed_state.json").write_text("{}")
    (run / "config.toml").write_text("")
    (run / "per_site_losses.npy").write_bytes(b"\0")
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "fid": 3.0, "loss": 0.2}) + "\n")
    rec = {"seq": 0, "utc": "t", "prev_hash": "0", "signature": "s", "schema_version": 1, "kind": "round_end",
           "payload": {"round": 1, "metrics": {"fid": 3.0, "loss": 0.2}, "checkpoint": None}}
    (run / "ledger.jsonl").write_text(json.dumps(rec) + "\n")
    assert R.unlisted(run) == [("file", "per_site_losses.npy")]
    rows = R.release_rows(run)
    assert [(r["release"], r["where"]) for r in rows if r["class"] == R.UNACCOUNTED] == [
        ("training loss (ledgers before issue 15)", ["ledger", "metrics"]),
        ("unlisted: per_site_losses.npy", ["file"])]
    assert rows[0]["class"] == R.UNACCOUNTED   # unaccounted rows first

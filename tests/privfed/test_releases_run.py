"""Issue 15: every release of a real run is in the release inventory (audits/releases.py), none is unaccounted, the
sites' training loss is released nowhere, and the FID feature extractor never saw a site's training image."""

import json
import shutil

import pytest

from audits import releases as R
from audits.errors import ArtifactMismatchError
from audits.verify import verify_run
from audits.report.build import build_report
from privfed.federation.runner import FederatedRun


def _records(run):
    return [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def _check_run(run):
    build_report(run)   # the report is part of what a run publishes
    assert R.unlisted(run) == []
    rows = R.release_rows(run)
    assert not [r for r in rows if r["class"] == R.UNACCOUNTED]
    doc = json.loads((run / "report" / "report.json").read_text())
    assert doc["sections"]["releases"]["unaccounted"] == []
    assert not any("unaccounted" in x for x in doc["sections"]["verdict"]["open_issues"])
    # no training loss of private batches: not in the ledger, not in metrics.jsonl
    recs = _records(run)
    assert "loss" not in set(_keys([r["payload"] for r in recs]))
    assert all("loss" not in json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
    return recs, doc


def test_default_modes_run_every_release_is_in_the_inventory(tmp_path, tiny_config):
    cfg = tiny_config.replace(dp={"mode": "sample", "target_epsilon": 10.0}, secure_agg={"mode": "secagg+"})
    run = tmp_path / "run"
    fr = FederatedRun.create(cfg, run)
    sent = set()   # every field and array a site sends the server
    fr.observer = lambda direction, m: sent.update(R.message_paths(m.kind, m.fields, m.arrays)
                                                   if direction == "to_server" else ())
    fr.run()
    recs, doc = _check_run(run)
    assert "secagg_reply.array:sa.masked" in sent and "train_reply.num_examples" in sent
    msg = {p: R.classify("message", p) for p in sent}
    assert not [p for p, rel in msg.items() if rel is None]
    # the one value that leaves a site outside ε without a documented choice: the site's mean training loss, which
    # the server receives and records nowhere (removing it from train_reply is left to the message schema)
    assert not {p for p, rel in msg.items() if rel.status == R.UNACCOUNTED}
    assert not any(p.endswith("loss") for p in msg)              # the training loss never leaves a site
    # what the inventory says about this run's values (the report's table is built from the same classification)
    walk = R.walk_run(run)
    assert "round_end.metrics.eval_loss" in walk["ledger"] and "data_summary.clients.0.n" in walk["ledger"]
    cls = {p: R.classify("ledger", p).status for p in walk["ledger"]}
    assert cls["data_summary.clients.0.n"] == cls["round_start.selected"] == R.DECLARED
    assert cls["dp_event.event.sample_rate"] == R.DECLARED and cls["dp_event.event.noise_multiplier"] == R.ACCOUNTED
    files = {p: R.classify("file", p).status for p in walk["file"]}
    assert files["checkpoints/round_0000/unet/diffusion_pytorch_model.safetensors"] == R.PUBLIC
    assert files["checkpoints/round_0002/unet/diffusion_pytorch_model.safetensors"] == R.ACCOUNTED
    # the evaluation's provenance: public typeset digits, whose hash is not that of any site data
    ev = next(r["payload"] for r in recs if r["kind"] == "run_start")["evaluation"]
    assert ev["feature_extractor"]["class"] == "public" and ev["feature_extractor"]["image_count"] == 4000
    assert ev["evaluation_split"]["class"] == "declared" and ev["evaluation_split"]["image_count"] == 359
    assert (run / "cache" / "domain_classifier.provenance.json").is_file()
    # the extractor the FIDs were measured with is pinned by its hash: the verifier checks the run's copy
    fx = ev["feature_extractor"]
    assert fx["path"] == "cache/domain_classifier.safetensors" and len(fx["key"]) == len(fx["weights_sha256"]) == 64
    checks = {a.what: a for a in verify_run(run).artifacts}
    assert checks["feature_extractor"].status == "verified" and checks["feature_extractor"].sha256 == \
        fx["weights_sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    extractor = copy / "cache" / "domain_classifier.safetensors"
    extractor.write_bytes(extractor.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactMismatchError, match="feature extractor"):
        verify_run(copy)
    extractor.unlink()
    assert any("feature extractor" in w for w in verify_run(copy).warnings)
    # the statement says what ε covers and the adjacency with public site sizes; the report prints the provenance
    st = doc["sections"]["privacy_statement"]["text"]
    assert "ε covers exactly the checkpoints after round 0" in st and "site sizes n (public by the adjacency" in st
    assert "participation" in st and "The sites' training loss is not released." in st
    assert doc["sections"]["utility"]["evaluation"]["feature_extractor"]["class"] == "public"
    assert [r["round"] for r in doc["sections"]["utility"]["eval_loss"]] == [0, 2]
    html = (run / "report" / "report.html").read_text()
    assert '<h2 id="releases">' in html and "typeset-digits: 4000 digits" in html


def test_client_level_run_every_release_is_in_the_inventory(tmp_path, tiny_config):
    cfg = tiny_config.replace(dp={"mode": "client", "noise_multiplier": 1.0, "max_grad_norm": 0.5},
                              fed={"clients": 4, "fraction": 0.5, "min_clients": 2}, secure_agg={"mode": "off"})
    run = tmp_path / "run"
    FederatedRun.create(cfg, run).run()
    recs, doc = _check_run(run)
    events = [r["payload"] for r in recs if r["kind"] == "dp_event"]
    assert events and {e["unit"] for e in events} == {"client"}
    assert {e["event"]["sample_rate"] for e in events} == {0.5}
    # participation: ε against readers of the participant lists, without amplification by site sampling, is larger
    st = doc["sections"]["privacy_statement"]["text"]
    assert "cancel it for their readers" in st
    final = doc["sections"]["privacy_loss"]["final"]
    no_amp = doc["sections"]["privacy_statement"]["without_site_sampling"]
    assert set(no_amp) == set(final)
    assert all(no_amp[c] > final[c]["epsilon"] * 1.05 for c in final)
    assert "site sizes n (public by the adjacency" not in st   # the unit is a site: its size is no separate release

    # a file or field outside the inventory is caught: by the walker, in the report's table and on page 1
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "site_losses.json").write_text("[0.1]")
    lines = [json.loads(x) for x in (bad / "metrics.jsonl").read_text().splitlines()]
    lines[1]["loss"] = 0.84
    (bad / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert R.unlisted(bad) == [("file", "site_losses.json")]
    paths = build_report(bad)
    issues = json.loads(paths.json.read_text())["sections"]["verdict"]["open_issues"]
    assert any("unaccounted" in x and "site_losses.json" in x and "training loss" in x for x in issues)

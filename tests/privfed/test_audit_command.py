"""`privfed audit` on a real (tiny) run: report sections, empirical audits, loud failure on a violated bound."""

import json

import pytest

import privfed.empirical as empirical
from privfed.cli import main
from privfed.federation.runner import FederatedRun
from tests.privfed.cli_errors import assert_refused


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    from privfed.config import RunConfig
    cfg = RunConfig.from_dict({
        "seed": 4, "eval_every": 2, "eval_samples": 16,
        "model": {"base_channels": 8, "num_train_timesteps": 50, "sampling_steps": 2, "pretrain_steps": 5,
                  "pretrain_set_size": 64},
        "fed": {"clients": 3, "rounds": 2, "batch_size": 32, "local_epochs": 1},
        "data": {"partition": "iid"},
        "dp": {"mode": "sample", "target_epsilon": 4.0, "placement": "local"}, "secure_agg": {"mode": "secagg+"},
    })
    run = tmp_path_factory.mktemp("audit") / "run"
    FederatedRun.create(cfg, run).run()
    return run


def test_audit_writes_report_with_all_sections(dp_run, capsys):
    assert main(["audit", str(dp_run)]) == 0
    html = (dp_run / "report" / "report.html").read_text()
    from audits.report.text import SECTIONS
    for key, title in SECTIONS:
        assert f'id="{key}"' in html and title in html, title
    rep = json.loads((dp_run / "report" / "report.json").read_text())
    assert "integrity" in json.dumps(rep)
    assert "not recorded" in html        # the empirical audit was not run: said so, not omitted


def test_audit_report_honours_a_pinned_head(dp_run, capsys):
    """`privfed audit RUN --head H` must fail when H is not in the ledger (a rewritten ledger, even re-signed)."""
    assert main(["audit", str(dp_run), "--head", "0" * 63 + "1"]) != 0
    assert "head" in capsys.readouterr().out.lower()
    lines = (dp_run / "ledger.jsonl").read_bytes().splitlines()
    import hashlib
    assert main(["audit", str(dp_run), "--head", hashlib.sha256(lines[3]).hexdigest()]) == 0


def test_empirical_audit_of_the_default_placement(tmp_path, capsys, monkeypatch):
    """The default placement on the digits (distributed DP-SGD with the public subspace) audits too: canaries enter
    the sites' clipped sums, the control resets placement and projection, and no bound claims more than the ledger."""
    from privfed.config import RunConfig
    cfg = RunConfig.from_dict({
        "seed": 4, "eval_every": 2, "eval_samples": 16,
        "model": {"base_channels": 8, "num_train_timesteps": 50, "sampling_steps": 2, "pretrain_steps": 5,
                  "pretrain_set_size": 64},
        "fed": {"clients": 3, "rounds": 2, "batch_size": 32},
        "data": {"partition": "iid"}, "dp": {"mode": "sample", "target_epsilon": 4.0}})
    # 64 public images: the default subspace takes them all, shrunk
    assert cfg.dp.effective_placement == "distributed" and cfg.dp.public_subspace == 64
    assert cfg.dp.public_subspace_shrink
    run = tmp_path / "run"
    FederatedRun.create(cfg, run).run()
    monkeypatch.setattr(empirical, "CANARIES", 64)
    monkeypatch.setattr(empirical, "GRADIENT_CANARIES", 400)
    monkeypatch.setattr(empirical, "MIA_DRAWS", 4)
    assert main(["audit", "--empirical", str(run)]) == 0, capsys.readouterr()
    res = json.loads((run / "report" / "empirical.json").read_text())
    for kind in ("gradient_canaries", "image_canaries"):
        b = res["canary"][f"dp_model_{kind}"]
        assert 0 <= b["epsilon_lower_bound"] <= b["claimed_epsilon"] <= 4.0 + 1e-9
    cost = res["audit_cost"]["helper_runs"]
    assert cost[0]["epsilon_max"] is None and 0 < cost[2]["epsilon_max"] <= 4.0 + 1e-9


def test_empirical_audit_tiny_run(dp_run, capsys, monkeypatch):
    monkeypatch.setattr(empirical, "CANARIES", 64)
    monkeypatch.setattr(empirical, "GRADIENT_CANARIES", 400)
    monkeypatch.setattr(empirical, "MIA_DRAWS", 4)
    assert main(["audit", "--empirical", str(dp_run)]) == 0
    res = json.loads((dp_run / "report" / "empirical.json").read_text())
    mia = res["membership_inference"]
    kinds = ("gradient_canaries", "image_canaries")
    assert set(mia) == {"audited_model", "non_private_control",
                        *(f"{m}_{k}" for m in ("non_private_control", "dp_model") for k in kinds)}
    for r in mia.values():
        assert 0 <= r["auc"] <= 1 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        assert r["roc"]["fpr"][-1] == 1.0 and len(r["roc"]["fpr"]) == len(r["roc"]["tpr"])
    # the white-box canaries are found in the non-private control far more often than under DP
    ctrl, dp = mia["non_private_control_gradient_canaries"], mia["dp_model_gradient_canaries"]
    assert ctrl["tpr_at_1pct_fpr"] > 0.5 and ctrl["tpr_at_1pct_fpr_ci"][0] > dp["tpr_at_1pct_fpr_ci"][1]
    for kind in kinds:
        b = res["canary"][f"dp_model_{kind}"]
        assert 0 <= b["epsilon_lower_bound"] <= b["claimed_epsilon"] <= 4.0 + 1e-9
        assert b["max_certifiable_epsilon"] > 0
        assert res["canary"][f"non_private_control_{kind}"]["claimed_epsilon"] is None
    # the control's gradient canaries refute any ε below a clearly positive bound: the audit has power
    assert res["canary"]["non_private_control_gradient_canaries"]["epsilon_lower_bound"] > 1.0
    cost = res["audit_cost"]
    assert [r["run"] for r in cost["helper_runs"]] == ["non_private_control", "non_private_control_replay",
                                                      "dp_model", "dp_model_replay"]
    assert cost["helper_runs"][0]["epsilon_max"] is None and cost["helper_runs"][2]["epsilon_max"] <= 4.0 + 1e-9
    assert not cost["runs_kept"] and not (dp_run / "report" / "empirical_runs").exists()   # deleted once scored
    html = (dp_run / "report" / "report.html").read_text()
    assert "Membership inference" in html and "One-run canary audit" in html and "gradient canaries" in html
    assert "What the audit itself cost" in html
    assert 'alt="membership inference ROC curves, log-log"' in html


def test_empirical_bound_above_claim_fails_loudly(dp_run, capsys, monkeypatch):
    monkeypatch.setattr(empirical, "CANARIES", 64)
    real = empirical.best_lower_bound

    def inflated(*a, **k):
        out = real(*a, **k)
        out["epsilon_lower_bound"] = 1e3
        return out
    monkeypatch.setattr(empirical, "best_lower_bound", inflated)
    assert main(["audit", "--empirical", str(dp_run)]) == 3
    assert "contradicts the accountant" in capsys.readouterr().out


def test_audit_bad_input(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) != 0


@pytest.mark.parametrize("extra", [["two"], ["verify"]])
def test_audit_with_more_than_one_run_dir_names_what_it_got(dp_run, capsys, extra):
    # e.g. a --pin-key value pasted with a line break splits into two words
    err = assert_refused(capsys, ["audit", str(dp_run), *extra], match="takes one RUN_DIR (or: verify RUN_DIR); got 2")
    assert repr(extra[0]) in err


def test_audit_verify_cross_checks_a_standalone_sites_receipt(tmp_path, capsys):
    """A hospital keeps its receipt in its own SITE_DIR: `audit verify RUN_DIR --site SITE_DIR` cross-checks it."""
    import shutil

    from tests.audits.conftest import write_run

    run = write_run(tmp_path / "run", sites=True)
    site_dir = tmp_path / "hospital-a"
    shutil.move(run / "sites" / "site-a", site_dir)
    assert main(["audit", "verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "site site-a: no receipt" in out and "site site-b: receipt verified" in out
    assert main(["audit", "verify", str(run), "--site", str(site_dir)]) == 0
    assert "site site-a: receipt verified and consistent" in capsys.readouterr().out
    lines = (site_dir / "receipt.jsonl").read_bytes().splitlines(keepends=True)
    (site_dir / "receipt.jsonl").write_bytes(b"".join(lines[:-1]))  # the site's last spend is gone
    assert main(["audit", "verify", str(run), "--site", str(site_dir)]) == 1
    err = capsys.readouterr().err
    assert "ReceiptMismatch" in err and "site site-a" in err
    assert main(["audit", str(run), "--site", str(site_dir)]) == 1


def _forge_halved_epsilon(run):
    """The operator (who holds RUN_DIR/keys/ledger.key) rewrites every dp_event with σ×2, recomputes every ε the
    ledger reports (dp_events, budget checks, run_end) so that the ledger alone is consistent, and re-signs it."""
    from audits.accounting import IndependentAccountant, parse_event
    from tests.audits.test_receipt import _forge_ledger

    def edit(records):
        accs, last_delta = {}, {}
        for r in records:
            p = r["payload"]
            if r["kind"] == "dp_event":
                p["event"]["noise_multiplier"] *= 2
                acc = accs.setdefault(p["client"], IndependentAccountant(accountant=p["accountant"]))
                acc.compose(parse_event(p["event"]))
                p["epsilon"] = acc.epsilon(delta=p["delta"])
                last_delta[p["client"]] = p["delta"]
            elif r["kind"] == "run_end":
                p["final_epsilon"] = {c: a.epsilon(delta=p["delta"] or last_delta[c]) for c, a in accs.items()}
        assert accs, "the run recorded no dp_event to forge"
    _forge_ledger(run, edit)


def test_forged_ledger_gets_no_passed_report(dp_run, tmp_path, capsys):
    """Issue 16: a ledger rewritten with σ×2 (ε roughly halved) and re-signed with the run's own key must not get a
    PASSED report: the original head hash catches it, and without any pin the sites' receipts do."""
    import hashlib
    import shutil

    from audits.verify import verify_run

    run = tmp_path / "run"
    shutil.copytree(dp_run, run, ignore=shutil.ignore_patterns("report"))
    assert sorted(p.parent.name for p in (run / "sites").glob("*/receipt.jsonl")), "the run keeps site receipts"
    head = hashlib.sha256((run / "ledger.jsonl").read_bytes().splitlines()[-1]).hexdigest()
    before = verify_run(run, check_receipts=False).final_epsilon
    _forge_halved_epsilon(run)
    forged = verify_run(run, check_receipts=False)        # the ledger alone verifies: signatures, chain, ε
    assert all(forged.final_epsilon[c] < 0.8 * before[c] for c in before)
    capsys.readouterr()

    assert main(["audit", str(run), "--head", head]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "head" in out.lower()
    assert not (run / "report" / "report.json").exists() and not (run / "report" / "report.html").exists()

    assert main(["audit", str(run)]) == 1                  # nothing pinned: the receipts cross-check fails it
    assert "ReceiptMismatch" in capsys.readouterr().out
    assert not (run / "report" / "report.json").exists() and not (run / "report" / "report.html").exists()
    assert main(["audit", "verify", str(run), "--head", head]) == 1
    assert main(["audit", "verify", str(run)]) == 1
    shutil.rmtree(run / "sites")                            # the operator also drops the receipts: the pin still holds
    assert main(["audit", str(run), "--head", head]) == 1
    assert "pinned head hash" in capsys.readouterr().out
    assert not (run / "report" / "report.json").exists()


def test_report_states_what_was_pinned(tmp_path, capsys):
    from audits.verify import verify_run
    from tests.audits.conftest import write_run

    run = write_run(tmp_path / "run", sites=True)
    rep = verify_run(run)
    assert main(["audit", str(run)]) == 0
    doc = json.loads((run / "report" / "report.json").read_text())
    integ = doc["sections"]["integrity"]
    assert integ["pinned"] == {"key_fingerprint": False, "head_hash": False}
    assert "only relative to the operator's own key" in integ["verdict"]
    assert "receipt" in integ["verdict"] and "stronger check" in integ["verdict"]
    html = (run / "report" / "report.html").read_text()
    assert "only relative to the operator&#39;s own key" in html or "only relative to the operator's own key" in html

    assert main(["audit", str(run), "--pin-key", rep.key_fingerprint, "--head", rep.head_hash]) == 0
    integ = json.loads((run / "report" / "report.json").read_text())["sections"]["integrity"]
    assert integ["pinned"] == {"key_fingerprint": True, "head_hash": True}
    assert "only relative" not in integ["verdict"]
    capsys.readouterr()
    assert main(["audit", "verify", str(run), "--pin-key", rep.key_fingerprint]) == 0
    out = capsys.readouterr().out
    assert "pinned: key fingerprint yes, head hash no" in out


def test_audit_wrong_pin_key_is_exit_1_and_any_spelling_of_the_right_one_passes(tmp_path, capsys):
    from audits.verify import verify_run
    from tests.audits.conftest import write_run

    run = write_run(tmp_path / "run")
    hexpart = verify_run(run).key_fingerprint.removeprefix("sha256:")
    wrong = ("f" if hexpart[0] != "f" else "e") + hexpart[1:]
    assert main(["audit", str(run), "--pin-key", wrong]) == 1
    assert main(["audit", "verify", str(run), "--pin-key", wrong]) == 1
    assert "PinnedKeyMismatch" in capsys.readouterr().out
    assert main(["audit", str(run), "--pin-key", hexpart.upper()]) == 0
    assert main(["audit", "verify", str(run), "--pin-key", "SHA256:" + hexpart]) == 0
    assert main(["audit", str(run), "--pin-key", "sha256:nothex"]) == 2

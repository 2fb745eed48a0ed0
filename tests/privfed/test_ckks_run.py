"""CKKS aggregation end to end (FederatedRun with secure_agg.mode = "ckks"): the server sees only ciphertexts and
the flooded sum, the key holder signs what it decrypted into the ledger, the model matches the plain run."""

import json
import stat

import numpy as np
import pytest
import torch

pytest.importorskip("tenseal")

from audits.verify import verify_run  # noqa: E402
from privfed.federation.runner import FederatedRun  # noqa: E402

SERVER_BOUND = {"offer_reply", "train_reply", "ckks_reply", "close_reply", "error"}


def _weights(path):
    from diffusers import UNet2DModel
    return torch.nn.utils.parameters_to_vector(UNet2DModel.from_pretrained(path).parameters()).detach()


def _records(run, kind):
    return [json.loads(line)["payload"] for line in (run / "ledger.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


def test_ckks_run_matches_plain_run_and_the_server_sees_only_ciphertexts(tmp_path, tiny_config):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from secure_agg.he.statements import DECRYPTION_LABEL, verify_statement

    plain = tiny_config.replace(fed={"rounds": 1}, eval_every=1)
    FederatedRun.create(plain, tmp_path / "plain").run()
    seen = []
    run = FederatedRun.create(plain.replace(secure_agg={"mode": "ckks"}), tmp_path / "he")
    run.observer = lambda direction, m: seen.append((direction, m.kind, {k: a.dtype for k, a in m.arrays.items()}))
    run.run()
    to_server = [s for s in seen if s[0] == "to_server"]
    assert {k for _, k, _ in to_server} <= SERVER_BOUND and "ckks_reply" in {k for _, k, _ in to_server}
    # the only arrays that reach the server from a site are CKKS ciphertext bytes, never float updates
    assert {str(d) for _, _, arrays in to_server for d in arrays.values()} == {"uint8"}
    # the sites got only the public context: the run's secret key never left the key holder's directory
    secret = tmp_path / "he" / "key_holder" / "ckks_secret.ctx"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "he" / "key_holder" / "identity.key").stat().st_mode) == 0o600

    a = _weights(tmp_path / "plain" / "checkpoints" / "round_0001" / "unet")
    b = _weights(tmp_path / "he" / "checkpoints" / "round_0001" / "unet")
    clip = run.cfg.secure_agg.clip_range
    # same starting model: differences are the flooding noise (σ = 2^-30) and float32 rounding, unless the plain
    # update exceeded the clip range (CKKS sites clip per coordinate, as SecAgg's quantizer does)
    assert (a - b).abs().max().item() <= 1e-6 * clip + 4 * torch.finfo(torch.float32).eps * a.abs().max().item()

    sa = _records(tmp_path / "he", "secure_agg")
    t = sa[0]["transcript"]
    assert t["mode"] == "ckks" and t["contributors"] == ["0", "1", "2"] and t["params"]["security_bits"] >= 128
    dec = _records(tmp_path / "he", "he_decryption")
    assert len(dec) == 1 and dec[0]["statement"]["contributors"] == [0, 1, 2]
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(dec[0]["key_holder_public_key"]))
    verify_statement(DECRYPTION_LABEL, dec[0]["statement"], bytes.fromhex(dec[0]["signature"]), key)
    report = verify_run(tmp_path / "he")
    assert report.complete
    assert np.isfinite(b.numpy()).all()


def test_cli_run_secure_agg_ckks_with_dp_receipts_consistent_and_audit(tmp_path, tiny_config, capsys):
    """`privfed run --secure-agg ckks` under DP-SGD: each site charges its release once; ledger and receipts agree;
    `privfed audit` renders the report."""
    from privfed.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_config.replace(fed={"rounds": 1}, eval_every=1,
                                       dp={"mode": "sample", "target_epsilon": 8.0}).to_toml())
    out = tmp_path / "r"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--secure-agg", "ckks"]) == 0
    assert _records(out, "run_start")[0]["secure_agg_mode"] == "ckks"
    assert len(_records(out, "he_decryption")) == 1
    assert sorted(int(e["client"]) for e in _records(out, "dp_event")) == [0, 1, 2]
    rep = verify_run(out)
    assert rep.complete and rep.receipts and all(c.status == "consistent" for c in rep.receipts)
    capsys.readouterr()
    assert main(["audit", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    he = report["sections"]["secure_aggregation"]["he"]
    html = (out / "report" / "report.html").read_text()
    assert "Homomorphic aggregation (CKKS)" in html and "signature verifies" in html and "security_bits" in html
    assert he["params"]["security_bits"] == 128 and he["key_holder"].startswith("sha256:")
    assert he["decryptions"][0]["status"] == "signature verifies" and he["decryptions"][0]["contributors"] == [0, 1, 2]


def test_site_encrypts_only_under_the_pinned_key_holders_public_context(tmp_path, tiny_config):
    """An active server cannot swap in a context of its own (it would hold that secret key) nor hand the sites a
    context with the secret key: the site refuses by name and nothing leaves it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from audits.keys import load_private_key
    from privfed.parties import messages as M
    from secure_agg.he import CkksParams, SecretContext, digest
    from secure_agg.he.statements import CONTEXT_LABEL, context_statement, sign_statement

    run = FederatedRun.create(tiny_config.replace(fed={"rounds": 1}, eval_every=1, secure_agg={"mode": "ckks"}),
                              tmp_path / "r")
    run.run()
    site, kh = run.sites[0], run.key_holder
    site.open_receipt()
    server_key = load_private_key(tmp_path / "r" / "keys" / "ledger.key")
    weights = torch.nn.utils.parameters_to_vector(run.model.parameters()).detach().numpy().astype(np.float32)

    def send(kind, r, fields, arrays=None):
        return site.handle(M.sign(M.make(kind, run_id=site.run_id, round_index=r, sender=M.SERVER, receiver=0,
                                         fields=fields, arrays=arrays or {}), server_key))

    def ckks_round(r, context: bytes, signer, params=CkksParams()):
        offer = {"participants": [0, 1, 2], "aggregation": "ckks", "dp_mode": "off", "delta": 0.0,
                 "config_hash": site.cfg_hash, "server_key": run.server.key_fingerprint}
        assert send("offer", r, offer).fields["accepted"]
        assert send("train", r, {}, {"weights": weights}).kind == "train_reply"
        sha = digest(context)
        sig = sign_statement(CONTEXT_LABEL, context_statement(run_id=site.run_id, context_sha256=sha,
                                                              params=params.describe()), signer)
        return send("ckks", r, {"weight_total": 3.0, "context_sha256": sha, "context_signature": sig,
                                "poly_modulus_degree": params.poly_modulus_degree,
                                "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                                "scale_bits": params.scale_bits},
                    {"context": np.frombuffer(context, np.uint8)})

    server_made = SecretContext.create(CkksParams())
    assert ckks_round(2, server_made.public_bytes(), Ed25519PrivateKey.generate()).fields["error"] == "IntegrityError"
    leaked = ckks_round(3, server_made.secret_bytes(), kh.identity.private_key)
    assert leaked.fields["error"] == "InsecureParametersError"
    ok = ckks_round(4, (tmp_path / "r" / "key_holder" / "ckks_public.ctx").read_bytes(), kh.identity.private_key)
    assert ok.kind == "ckks_reply" and ok.arrays["ciphertext"].dtype == np.uint8
    site.close()


def test_ckks_run_resumes_with_the_same_key_holder(tmp_path, tiny_config):
    from privfed.federation.runner import SilentReporter

    class CrashIn(SilentReporter):
        def client_done(self, round_index, client_id, update):
            if round_index == 2:
                raise KeyboardInterrupt

    cfg = tiny_config.replace(fed={"rounds": 2}, secure_agg={"mode": "ckks"})
    with pytest.raises(KeyboardInterrupt):
        FederatedRun.create(cfg, tmp_path / "c", reporter=CrashIn()).run()
    public = (tmp_path / "c" / "key_holder" / "ckks_public.ctx").read_bytes()
    assert FederatedRun.resume(tmp_path / "c").run().rounds_completed == 2
    assert (tmp_path / "c" / "key_holder" / "ckks_public.ctx").read_bytes() == public
    dec = _records(tmp_path / "c", "he_decryption")
    assert [d["round"] for d in dec] == [1, 2] and len({d["key_holder_public_key"] for d in dec}) == 1
    assert len({d["statement"]["context_sha256"] for d in dec}) == 1
    assert verify_run(tmp_path / "c").complete

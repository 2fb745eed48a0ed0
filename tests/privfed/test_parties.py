"""Sites and server as separate parties: identities, roster, pinned policy, signed messages, sealed state."""

import json
import os
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.verify import verify_run
from privfed.errors import ConfigError, PolicyViolation, SealedStateError, SiteKeyError, UnknownSiteError
from privfed.federation.runner import FederatedRun
from privfed.parties import messages as M
from privfed.parties.identity import Roster, init_site, load_identity
from privfed.parties.policy import SitePolicy
from secure_agg.errors import IntegrityError, InvalidMessage


def _records(run, kind=None):
    recs = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    return [r["payload"] for r in recs if kind is None or r["kind"] == kind]


def _receipt(site_dir, kind):
    return [json.loads(line)["payload"] for line in (site_dir / "receipt.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


# ---- identities and roster ------------------------------------------------------------------------------------
def test_site_init_creates_a_private_long_term_key_and_refuses_to_overwrite(tmp_path):
    ident = init_site(tmp_path / "s", site_id=4)
    assert stat.S_IMODE((tmp_path / "s" / "identity.key").stat().st_mode) == 0o600
    assert load_identity(tmp_path / "s").fingerprint == ident.fingerprint
    assert ident.fingerprint.startswith("sha256:") and "PRIVATE" not in repr(ident)
    assert SitePolicy.load(tmp_path / "s").site_id == 4
    with pytest.raises(SiteKeyError):
        init_site(tmp_path / "s")
    os.chmod(tmp_path / "s" / "identity.key", 0o644)
    with pytest.raises(SiteKeyError, match="0600"):
        load_identity(tmp_path / "s")
    with pytest.raises(SiteKeyError, match="not found"):
        load_identity(tmp_path / "nowhere")


def test_roster_round_trips_and_its_fingerprint_binds_every_key(tmp_path):
    keys = {i: Ed25519PrivateKey.generate().public_key() for i in range(3)}
    r = Roster(keys)
    r.save(tmp_path / "roster.json")
    assert Roster.load(tmp_path / "roster.json").fingerprint == r.fingerprint
    other = Roster({**keys, 2: Ed25519PrivateKey.generate().public_key()})
    assert other.fingerprint != r.fingerprint
    with pytest.raises(UnknownSiteError):
        r.public_key(7)
    with pytest.raises(ValueError):
        Roster({0: keys[0], 1: keys[0]})          # two sites, one key


# ---- pinned policy --------------------------------------------------------------------------------------------
def test_policy_refuses_what_breaks_it_and_rejects_bad_files(tmp_path):
    pol = SitePolicy(site_id=1, min_clients=4, server_key="sha256:aa")
    ok = dict(aggregation="secagg+", participants=5, delta=1e-6, server_key="sha256:aa")
    pol.check_offer(**ok)
    for bad, match in [({"aggregation": "off"}, "in the clear"), ({"participants": 3}, "minimum of 4"),
                       ({"delta": 1e-3}, "max_delta"), ({"server_key": "sha256:bb"}, "pinned")]:
        with pytest.raises(PolicyViolation, match=match):
            pol.check_offer(**{**ok, **bad})
    (tmp_path / "site.toml").write_text('[site]\nid = 1\n[policy]\nmin_clients = "3"\n')
    with pytest.raises(ConfigError, match="min_clients"):
        SitePolicy.load(tmp_path)
    (tmp_path / "site.toml").write_text('[site]\nid = 1\n[policy]\nmax_epsilon_typo = 3\n')
    with pytest.raises(ConfigError, match="unknown"):
        SitePolicy.load(tmp_path)


# ---- messages -------------------------------------------------------------------------------------------------
def _msg(**kw):
    base = dict(run_id="run", round_index=3, sender=M.SERVER, receiver=1, fields={"weight_total": 2.0})
    base.update(kw)
    return M.make("upload", **base)


def test_codec_round_trips_and_is_strict():
    key = Ed25519PrivateKey.generate()
    m = M.sign(M.make("plain_update", run_id="run", round_index=3, sender=1, receiver=M.SERVER,
                      fields={"weight": 1.5}, arrays={"delta": np.arange(4, dtype=np.float64)}), key)
    config, arrays = M.encode(m)
    # Flower's ConfigRecord holds scalars and lists of one scalar type: no dicts, no tuples
    assert all(isinstance(v, (int, float, str, bytes, bool, list)) for v in config.values())
    back = M.decode(config, arrays)
    M.verify(back, key.public_key())
    assert back.fields == m.fields and np.array_equal(back.arrays["delta"], m.arrays["delta"])
    for change, match in [({"f.weight": 1}, "must be float"), ({"f.extra": 1.0}, "fields"),
                          ({"v": 2}, "version"), ({"kind": "nope"}, "unknown message kind"),
                          ({"junk": 1}, "unknown message entries")]:
        with pytest.raises(InvalidMessage, match=match):
            M.decode({**config, **change}, arrays)
    with pytest.raises(InvalidMessage, match="lacks"):
        M.decode({k: v for k, v in config.items() if k != "round"}, arrays)
    with pytest.raises(InvalidMessage):
        M.make("upload", run_id="r", round_index=1, sender=-1, receiver=0, fields={"weight_total": 1})


def test_signatures_bind_round_receiver_and_arrays():
    key = Ed25519PrivateKey.generate()
    m = M.sign(_msg(), key)
    M.verify(m, key.public_key())
    from dataclasses import replace
    for forged in (replace(m, round=4), replace(m, receiver=2), replace(m, run_id="other"),
                   replace(m, fields={"weight_total": 3.0})):
        with pytest.raises(IntegrityError):
            M.verify(forged, key.public_key())
    with pytest.raises(IntegrityError):
        M.verify(m, Ed25519PrivateKey.generate().public_key())
    p = M.sign(M.make("plain_update", run_id="r", round_index=1, sender=0, receiver=M.SERVER, fields={"weight": 1.0},
                      arrays={"delta": np.zeros(3)}), key)
    with pytest.raises(IntegrityError):
        M.verify(replace(p, arrays={"delta": np.ones(3)}), key.public_key())


# ---- whole runs -----------------------------------------------------------------------------------------------
def test_a_site_whose_policy_forbids_plaintext_refuses_and_the_round_goes_on(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1)       # secure aggregation off
    run = FederatedRun.create(cfg, tmp_path / "r")
    init_site(tmp_path / "r" / "sites" / "1", site_id=1)             # this hospital pins secure aggregation
    res = run.run()
    assert res.rounds_completed == 1
    refused = _records(tmp_path / "r", "site_event")
    assert [(e["client"], e["event"], e["error"]) for e in refused] == [("1", "refused", "PolicyViolation")]
    assert _records(tmp_path / "r", "round_start")[0]["selected"] == ["0", "2"]
    assert [r["error"] for r in _receipt(tmp_path / "r" / "sites" / "1", "refusal")] == ["PolicyViolation"]
    sa = _records(tmp_path / "r", "secure_agg")
    assert sa[0]["transcript"]["plaintext"] is True       # the plaintext path is labelled in the ledger
    rep = verify_run(tmp_path / "r")
    assert rep.complete


def test_forged_or_foreign_messages_are_refused_by_the_site(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1)
    run = FederatedRun.create(cfg, tmp_path / "r")
    run.run()
    site = run.sites[0]
    site.open_receipt()
    server_key = __import__("audits.keys", fromlist=["x"]).load_private_key(tmp_path / "r" / "keys" / "ledger.key")
    offer = {"participants": [0, 1, 2], "aggregation": "off", "dp_mode": "off", "delta": 0.0,
             "config_hash": site.cfg_hash, "server_key": ""}
    good = M.make("offer", run_id=site.run_id, round_index=2, sender=M.SERVER, receiver=0, fields=offer)
    forged = M.sign(good, Ed25519PrivateKey.generate())               # not the pinned server key
    assert site.handle(forged).fields["error"] == "IntegrityError"
    other_run = M.sign(M.make("offer", run_id="another-run", round_index=2, sender=M.SERVER, receiver=0,
                              fields=offer), server_key)
    assert site.handle(other_run).fields["error"] == "UnknownSiteError"
    to_other_site = M.sign(M.make("offer", run_id=site.run_id, round_index=2, sender=M.SERVER, receiver=1,
                                  fields=offer), server_key)
    assert site.handle(to_other_site).fields["error"] == "UnknownSiteError"
    out_of_order = M.sign(M.make("upload", run_id=site.run_id, round_index=2, sender=M.SERVER, receiver=0,
                                 fields={"weight_total": 1.0}), server_key)
    assert site.handle(out_of_order).kind == "error"
    site.close()


def test_server_excludes_a_reply_signed_by_a_key_not_on_the_roster(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1)
    run = FederatedRun.create(cfg, tmp_path / "r")
    run.run()
    server = run.server
    impostor = Ed25519PrivateKey.generate()

    class Impostor:
        def send(self, messages, on_reply=None):
            for c, m in messages.items():
                reply = M.sign(M.make("close_reply", run_id=m.run_id, round_index=m.round, sender=c,
                                      receiver=M.SERVER), impostor)
                on_reply(c, reply)

    class Ledger:
        records = []

        def append(self, kind, payload):
            self.records.append((kind, payload))

    server.engine, server.ledger = Impostor(), Ledger()
    got = server.exchange(9, "close", {0: {"charged": False, "contributed": False, "event_type": "none",
                                           "noise_multiplier": 0.0, "sample_rate": 0.0, "event_steps": 0,
                                           "epsilon": 0.0}})
    assert got == {}
    (kind, ev), = server.ledger.records
    assert kind == "site_event" and ev["event"] == "excluded" and ev["error"] == "IntegrityError"


def test_sealed_round_state_round_trips_and_refuses_tampering(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1)
    run = FederatedRun.create(cfg, tmp_path / "r")
    run.run()
    a, b = run.sites[0], run.sites[1]
    import torch
    from privfed.federation.client import ClientUpdate
    a._round = {"round": 5, "stage": "trained", "charged": False, "participants": [0, 1, 2], "aggregation": "off",
                "update": ClientUpdate(client_id=0, delta=torch.arange(6.0), num_examples=6, loss=0.5, steps=2)}
    blob = a.seal_state()
    assert b"trained" in blob and torch.arange(6.0).numpy().tobytes() not in blob    # header clear, state sealed
    a._round = {}
    a.unseal_state(blob, round_index=5)
    assert torch.equal(a._round["update"].delta, torch.arange(6.0)) and a._round["stage"] == "trained"
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(SealedStateError):
        a.unseal_state(bytes(bad), round_index=5)
    with pytest.raises(SealedStateError):
        a.unseal_state(blob, round_index=6)                   # another round
    with pytest.raises(SealedStateError):
        b.unseal_state(blob, round_index=5)                   # another site's key and id


def test_a_replayed_round_offer_is_refused(tmp_path, tiny_config):
    cfg = tiny_config.replace(fed={"rounds": 1}, eval_every=1)
    run = FederatedRun.create(cfg, tmp_path / "r")
    run.run()
    site = run.sites[2]
    site.open_receipt()
    from audits.keys import load_private_key
    key = load_private_key(tmp_path / "r" / "keys" / "ledger.key")
    offer = {"participants": [0, 1, 2], "aggregation": "off", "dp_mode": "off", "delta": 0.0,
             "config_hash": site.cfg_hash, "server_key": site.policy.server_key}
    site.policy = SitePolicy(**{**site.policy.__dict__, "require_secure_aggregation": False})
    reply = site.handle(M.sign(M.make("offer", run_id=site.run_id, round_index=1, sender=M.SERVER, receiver=2,
                                      fields=offer), key))
    assert reply.fields["accepted"] is False and "replayed" in reply.fields["reason"]
    fresh = site.handle(M.sign(M.make("offer", run_id=site.run_id, round_index=2, sender=M.SERVER, receiver=2,
                                      fields=offer), key))
    assert fresh.fields["accepted"] is True
    site.close()


def test_a_site_whose_key_is_not_the_rosters_refuses_to_start_and_resume_never_reenrols(tmp_path, tiny_config):
    from privfed.federation.runner import SilentReporter
    from privfed.parties.site import Site

    class CrashIn2(SilentReporter):
        def client_done(self, round_index, client_id, reply):
            if round_index == 2:
                raise KeyboardInterrupt

    cfg = tiny_config.replace(fed={"rounds": 2, "min_clients": 2}, eval_every=2)
    run = FederatedRun.create(cfg, tmp_path / "r", reporter=CrashIn2())
    with pytest.raises(KeyboardInterrupt):
        run.run()
    keys = {c: run.roster.public_key(c) for c in run.roster.ids}
    keys[0] = Ed25519PrivateKey.generate().public_key()          # the roster names another key for site 0
    with pytest.raises(UnknownSiteError, match="roster"):
        Site(0, site_dir=tmp_path / "r" / "sites" / "0", data=run.client_data[0], cfg=cfg, run_id="x",
             delta=None, roster=Roster(keys), server_key=Ed25519PrivateKey.generate().public_key())
    (tmp_path / "r" / "sites" / "1" / "identity.key").unlink()    # a site lost its key before the resume
    res = FederatedRun.resume(tmp_path / "r").run()
    assert res.rounds_completed == 2                             # the run goes on without it ...
    assert not (tmp_path / "r" / "sites" / "1" / "identity.key").exists()     # ... and never re-enrols it
    ev = [e for e in _records(tmp_path / "r", "site_event") if e["error"] == "SiteKeyError"]
    assert [(e["client"], e["event"], e["round"]) for e in ev] == [("1", "excluded", 2)]
    assert _records(tmp_path / "r", "round_start")[-1]["selected"] == ["0", "2"]
    assert verify_run(tmp_path / "r").complete

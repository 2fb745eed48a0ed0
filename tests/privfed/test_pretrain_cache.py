"""The public-pretraining cache: a reused entry gives the very weights a fresh computation gives, its key and weight
hash are in the signed ledger, and a tampered entry is recomputed, never used."""

import json

import torch
from safetensors.torch import load_file

from privfed import cache
from privfed.federation.runner import FederatedRun


def _weights(run_dir, r):
    return load_file(str(run_dir / "checkpoints" / f"round_{r:04d}" / "unet" / "diffusion_pytorch_model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reused_pretraining_equals_a_fresh_one(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config.replace(fed={"rounds": 1})
    first = FederatedRun.create(cfg, tmp_path / "a").run().metrics[0]
    second = FederatedRun.create(cfg, tmp_path / "b").run().metrics[0]
    assert (first["pretrain_cache"], second["pretrain_cache"]) == ("stored", "reused")
    for k in ("pretrain_key", "pretrain_sha256", "pretrain_loss", "fid"):
        assert first[k] == second[k]
    for r in (0, 1):
        assert _same(_weights(tmp_path / "a", r), _weights(tmp_path / "b", r))
    # the ledger signs the key and the weight hash of the initial model
    records = [json.loads(line) for line in (tmp_path / "b" / "ledger.jsonl").read_text().splitlines()]
    r0 = next(r for r in records if r["kind"] == "round_end" and r["payload"]["round"] == 0)
    assert r0["payload"]["metrics"]["pretrain_key"] == first["pretrain_key"]
    assert r0["payload"]["metrics"]["pretrain_sha256"] == first["pretrain_sha256"]
    # and the weights hash is the cache file's
    entry = tmp_path / "cache" / "pretrain" / first["pretrain_key"]
    assert json.loads((entry / "meta.json").read_text())["sha256"] == first["pretrain_sha256"]
    # the sites' batch size is not the pretraining's once that is pinned: same public artefact
    pinned = cfg.replace(fed={"batch_size": 8}, model={"pretrain_batch_size": cfg.fed.batch_size})
    again = FederatedRun.create(pinned, tmp_path / "p").run().metrics[0]
    assert again["pretrain_cache"] == "reused" and again["pretrain_key"] == first["pretrain_key"]
    # another seed is another artefact
    other = FederatedRun.create(cfg.replace(seed=cfg.seed + 1), tmp_path / "c").run().metrics[0]
    assert other["pretrain_cache"] == "stored" and other["pretrain_key"] != first["pretrain_key"]


def test_tampered_entry_is_recomputed_and_off_stores_nothing(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config.replace(fed={"rounds": 1})
    first = FederatedRun.create(cfg, tmp_path / "a").run().metrics[0]
    entry = tmp_path / "cache" / "pretrain" / first["pretrain_key"] / "model.safetensors"
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 1                                       # one flipped bit in the last weight
    entry.write_bytes(bytes(raw))
    again = FederatedRun.create(cfg, tmp_path / "b").run().metrics[0]
    assert again["pretrain_cache"] == "stored" and again["pretrain_sha256"] == first["pretrain_sha256"]
    assert _same(_weights(tmp_path / "a", 0), _weights(tmp_path / "b", 0))

    monkeypatch.setenv("PRIVFED_CACHE", "off")
    off = FederatedRun.create(cfg, tmp_path / "d").run().metrics[0]
    assert off["pretrain_cache"] == "off" and off["pretrain_sha256"] == first["pretrain_sha256"]
    assert not (tmp_path / "off").exists() and sorted(p.name for p in (tmp_path / "cache" / "pretrain").iterdir()) \
        == [first["pretrain_key"]]


def test_publishing_an_entry_replaces_a_stale_one_and_keeps_a_concurrent_one(tmp_path, monkeypatch):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "meta.json").write_text("stale")
    fresh = tmp_path / ".fresh.tmp"
    fresh.mkdir()
    (fresh / "meta.json").write_text("fresh")
    cache.publish_entry(fresh, entry)
    assert (entry / "meta.json").read_text() == "fresh" and not fresh.exists()

    # another run stores the same entry between our removal of the stale one and our rename: theirs stays whole
    late = tmp_path / ".late.tmp"
    late.mkdir()
    (late / "meta.json").write_text("ours")
    real_rmtree = cache.shutil.rmtree

    def rmtree_then_race(path, **kw):
        real_rmtree(path, **kw)
        path.mkdir()
        (path / "meta.json").write_text("theirs")

    monkeypatch.setattr(cache.shutil, "rmtree", rmtree_then_race)
    cache.publish_entry(late, entry)
    assert (entry / "meta.json").read_text() == "theirs"
    assert (late / "meta.json").read_text() == "ours"       # left for the caller's cleanup

"""CKKS aggregation between the server, the sites and the key holder, one test per bad input: a foreign,
truncated or wrong-length ciphertext is excluded by name and the round continues; too few contributors means
nothing is decrypted; the key holder refuses requests below its minimum and requests not signed by the server."""

import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.importorskip("tenseal")

from privfed.config import SecAggConfig  # noqa: E402
from privfed.federation.aggregation import KeyHolderChannel, build_aggregator  # noqa: E402
from privfed.parties import messages as M  # noqa: E402
from privfed.parties.engine import transport  # noqa: E402
from privfed.parties.key_holder import KeyHolder  # noqa: E402
from secure_agg.errors import IntegrityError  # noqa: E402
from secure_agg.he import CkksParams, PublicContext, SecretContext  # noqa: E402

RUN = "run-ckks"
DIM = 5000


@pytest.fixture
def parties(tmp_path):
    server_key = Ed25519PrivateKey.generate()
    kh = KeyHolder(tmp_path / "kh", run_id=RUN, server_key=server_key.public_key(), roster_ids=range(6),
                   min_contributors=3)
    calls = []

    def send(m):
        calls.append(m.kind)
        return transport(kh.handle(transport(m)))

    chan = KeyHolderChannel(send=send, server_key=server_key, key_holder_key=kh.public_key, run_id=RUN)
    agg = build_aggregator(SecAggConfig(mode="ckks", min_clients=3), run_id=RUN, roster=None, key_holder=chan)
    return server_key, kh, chan, agg, calls


def _exchange(behaviour, updates):
    """A fake transport: each site encrypts its update under the context it was sent, then misbehaves as told."""
    def exchange(kind, fields, arrays):
        assert kind == "ckks"
        out = {}
        for c, f in fields.items():
            params = CkksParams(poly_modulus_degree=f["poly_modulus_degree"],
                                coeff_mod_bit_sizes=tuple(f["coeff_mod_bit_sizes"]), scale_bits=f["scale_bits"])
            pub = PublicContext(arrays[c]["context"].tobytes(), params=params)
            sha, ct = pub.sha256, pub.encrypt(updates[c])
            how = behaviour.get(c)
            if how == "truncated":
                ct = ct[: len(ct) // 3]
            elif how == "wrong_length":
                ct = pub.encrypt(updates[c][:-1])
            elif how == "foreign":
                other = SecretContext.create(params)
                foreign = PublicContext(other.public_bytes(), params=params)
                sha, ct = foreign.sha256, foreign.encrypt(updates[c])
            elif how == "foreign_lying":            # another key, but claims the round's context
                other = SecretContext.create(params)
                ct = PublicContext(other.public_bytes(), params=params).encrypt(updates[c])
            out[c] = M.make("ckks_reply", run_id=RUN, round_index=1, sender=c, receiver=M.SERVER,
                            fields={"context_sha256": sha}, arrays={"ciphertext": np.frombuffer(ct, np.uint8)})
        return out
    return exchange


def _updates(n, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-0.25, 0.25, DIM) / n for c in range(n)}


def test_bad_ciphertexts_are_excluded_by_name_and_the_round_continues(parties):
    _, kh, _, agg, calls = parties
    ups = _updates(6)
    bad = {3: "truncated", 4: "wrong_length", 5: "foreign"}
    res = agg.aggregate(_exchange(bad, ups), round_index=1, participants=list(range(6)),
                        weights={c: 1.0 for c in range(6)}, dim=DIM)
    assert res.excluded == {3: "MalformedCiphertextError", 4: "WrongLengthError", 5: "ForeignContextError"}
    assert res.contributors == [0, 1, 2] and res.released == list(range(6)) and res.total_weight == 3.0
    expect = sum(ups[c] for c in range(3)) * 6.0         # the public pre-scale w_total multiplied back out
    assert np.max(np.abs(res.total.numpy() - expect)) <= 1e-6 * 0.25 * 6
    assert calls == ["he_context", "he_decrypt"]
    (kind, rec), = res.records
    assert kind == "he_decryption" and rec["statement"]["contributors"] == [0, 1, 2]
    assert kh.decrypted == [rec["statement"]]


def test_too_few_valid_contributors_nothing_is_decrypted(parties):
    _, kh, _, agg, calls = parties
    res = agg.aggregate(_exchange({1: "truncated"}, _updates(3)), round_index=1, participants=[0, 1, 2],
                        weights={c: 1.0 for c in range(3)}, dim=DIM)
    assert res.contributors == [] and res.total_weight == 0.0 and torch.count_nonzero(res.total) == 0
    assert res.transcript["aborted"].startswith("TooFewContributorsError")
    assert "he_decrypt" not in calls and kh.decrypted == [] and res.records == []


def test_a_garbage_sum_is_never_released(parties):
    _, kh, _, agg, _ = parties
    res = agg.aggregate(_exchange({2: "foreign_lying"}, _updates(4)), round_index=1, participants=[0, 1, 2, 3],
                        weights={c: 1.0 for c in range(4)}, dim=DIM)
    assert res.contributors == [] and res.transcript["aborted"].startswith("DecryptionRangeError")
    assert kh.decrypted == [] and res.records == []


def _decrypt_request(key, kh, contributors, ct=b"", round_index=1):
    m = M.make("he_decrypt", run_id=RUN, round_index=round_index, sender=M.SERVER, receiver=M.KEY_HOLDER,
               fields={"contributors": contributors, "dim": DIM, "bound": 0.3},
               arrays={"ciphertext": np.frombuffer(ct or b"\0", np.uint8)})
    return kh.handle(transport(M.sign(m, key)))


def test_key_holder_refuses_fewer_than_its_minimum_and_unknown_or_repeated_sites(parties):
    server_key, kh, _, _, _ = parties
    assert _decrypt_request(server_key, kh, [0, 1]).fields["error"] == "TooFewContributorsError"
    assert _decrypt_request(server_key, kh, [0, 1, 1]).fields["error"] == "TooFewContributorsError"
    assert _decrypt_request(server_key, kh, [0, 1, 9]).fields["error"] == "UnknownIdentityError"
    assert kh.decrypted == []


def test_key_holder_refuses_a_request_not_signed_by_the_server(parties):
    _, kh, _, _, _ = parties
    reply = _decrypt_request(Ed25519PrivateKey.generate(), kh, [0, 1, 2])
    assert reply.kind == "error" and reply.fields["error"] == "IntegrityError" and kh.decrypted == []


def test_a_context_not_signed_by_the_pinned_key_holder_is_refused(parties):
    server_key, kh, _, _, _ = parties
    chan = KeyHolderChannel(send=lambda m: transport(kh.handle(transport(m))), server_key=server_key,
                            key_holder_key=Ed25519PrivateKey.generate().public_key(), run_id=RUN)
    agg = build_aggregator(SecAggConfig(mode="ckks", min_clients=3), run_id=RUN, roster=None, key_holder=chan)
    with pytest.raises(IntegrityError):
        agg.aggregate(_exchange({}, _updates(3)), round_index=1, participants=[0, 1, 2],
                      weights={c: 1.0 for c in range(3)}, dim=DIM)


def test_key_holder_keys_are_private_and_reused_on_resume(parties, tmp_path):
    import stat

    server_key, kh, _, _, _ = parties
    for name in ("identity.key", "ckks_secret.ctx"):
        assert stat.S_IMODE((tmp_path / "kh" / name).stat().st_mode) == 0o600
    again = KeyHolder(tmp_path / "kh", run_id=RUN, server_key=server_key.public_key(), roster_ids=range(6),
                      min_contributors=3)
    assert again.context_sha256 == kh.context_sha256 and again.fingerprint == kh.fingerprint
    with pytest.raises(ValueError):
        KeyHolder(tmp_path / "kh2", run_id=RUN, server_key=server_key.public_key(), roster_ids=range(6),
                  min_contributors=1)


def test_key_holder_releases_one_decryption_per_round_and_remembers_it_across_a_resume(parties, tmp_path):
    server_key, kh, _, agg, calls = parties
    ups = _updates(3)

    def run_round(aggregator, r):
        return aggregator.aggregate(_exchange({}, ups), round_index=r, participants=[0, 1, 2],
                                    weights={c: 1.0 for c in range(3)}, dim=DIM)

    first = run_round(agg, 1)
    assert first.contributors == [0, 1, 2] and len(kh.decrypted) == 1
    # the same round again (a resumed round or a server asking twice: fresh ciphertext, same round): refused, so
    # two independently flooded decryptions of one round never leave the key holder
    again = run_round(agg, 1)
    assert again.contributors == [] and again.transcript["aborted"].startswith("ReplayError")
    assert torch.count_nonzero(again.total) == 0 and again.records == [] and len(kh.decrypted) == 1
    # the bound is on disk: a key holder restarted from its directory refuses round 1 and earlier rounds too
    restarted = KeyHolder(tmp_path / "kh", run_id=RUN, server_key=server_key.public_key(), roster_ids=range(6),
                          min_contributors=3)
    assert restarted.decrypted == kh.decrypted
    for r in (0, 1):
        assert _decrypt_request(server_key, restarted, [0, 1, 2], round_index=r).fields["error"] == "ReplayError"
    chan = KeyHolderChannel(send=lambda m: transport(restarted.handle(transport(m))), server_key=server_key,
                            key_holder_key=restarted.public_key, run_id=RUN)
    agg2 = build_aggregator(SecAggConfig(mode="ckks", min_clients=3), run_id=RUN, roster=None, key_holder=chan)
    nxt = run_round(agg2, 2)
    assert nxt.contributors == [0, 1, 2] and [st["round"] for st in restarted.decrypted] == [1, 2]
    assert np.max(np.abs(nxt.total.numpy() - sum(ups.values()) * 3.0)) <= 1e-6 * 0.25 * 3
    lines = (tmp_path / "kh" / "decryptions.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]


def test_an_unreadable_release_record_stops_the_key_holder(parties, tmp_path):
    server_key, _, _, _, _ = parties
    (tmp_path / "kh" / "decryptions.jsonl").write_text('{"round": 1}\n{"round": \n')
    with pytest.raises(IntegrityError, match="decryptions.jsonl:2"):
        KeyHolder(tmp_path / "kh", run_id=RUN, server_key=server_key.public_key(), roster_ids=range(6),
                  min_contributors=3)

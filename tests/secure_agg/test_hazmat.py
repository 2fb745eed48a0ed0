"""Known-answer tests (with provenance) for the wrapped primitives, plus Shamir properties."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st

from secure_agg.errors import IntegrityError
from secure_agg.hazmat import aead, hkdf, prg, shamir, signing, x25519

h = bytes.fromhex


# RFC 7748 §5.2 (X25519 test vectors, single scalar multiplication)
@pytest.mark.parametrize("scalar,u,out", [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
])
def test_x25519_rfc7748_5_2(scalar, u, out):
    assert x25519.agree(x25519.private_from_bytes(h(scalar)), h(u)) == h(out)


def test_x25519_rfc7748_6_1_diffie_hellman():
    # RFC 7748 §6.1 (Alice and Bob)
    a = x25519.private_from_bytes(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    b = x25519.private_from_bytes(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert x25519.public_bytes(a) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert x25519.public_bytes(b) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519.agree(a, x25519.public_bytes(b)) == shared == x25519.agree(b, x25519.public_bytes(a))


# RFC 5869 Appendix A, test cases 1-3 (HKDF-SHA256)
@pytest.mark.parametrize("ikm,salt,info,length,okm", [
    (b"\x0b" * 22, h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"), 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (bytes(range(0x00, 0x50)), bytes(range(0x60, 0xb0)), bytes(range(0xb0, 0x100)), 82,
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
     "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    (b"\x0b" * 22, b"", b"", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
])
def test_hkdf_rfc5869(ikm, salt, info, length, okm):
    assert hkdf.hkdf_sha256(ikm, salt=salt, info=info, length=length) == h(okm)


def test_hkdf_labels_and_pairs_differ():
    s = bytes(32)
    k1 = hkdf.derive_key(s, label=hkdf.LABEL_PAIRWISE_MASK, run_id="r", round_index=1, a=1, b=2)
    assert k1 == hkdf.derive_key(s, label=hkdf.LABEL_PAIRWISE_MASK, run_id="r", round_index=1, a=2, b=1)
    others = [hkdf.derive_key(s, label=hkdf.LABEL_SHARE_ENCRYPTION, run_id="r", round_index=1, a=1, b=2),
              hkdf.derive_key(s, label=hkdf.LABEL_PAIRWISE_MASK, run_id="r", round_index=2, a=1, b=2),
              hkdf.derive_key(s, label=hkdf.LABEL_PAIRWISE_MASK, run_id="q", round_index=1, a=1, b=2),
              hkdf.derive_key(s, label=hkdf.LABEL_PAIRWISE_MASK, run_id="r", round_index=1, a=1, b=3)]
    assert len({k1, *others}) == 5
    with pytest.raises(ValueError):
        hkdf.derive_key(s, label=b"other", run_id="r", round_index=1, a=1, b=2)


# McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 14 and 16 (AES-256), as used by NIST CAVP
def test_aes256_gcm_kat_case16():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    k = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    p = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525"
          "b16aedf5aa0de657ba637b39")
    a = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    iv = h("cafebabefacedbaddecaf888")
    c = h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
          "c5f61e6393ba7a0abcc9f662")
    tag = h("76fc6ece0f4e1768cddf8853bb2d551b")
    assert AESGCM(k).encrypt(iv, p, a) == c + tag
    assert aead.decrypt(k, iv + c + tag, a) == p  # the wrapper reads nonce || ciphertext || tag


def test_aes256_gcm_kat_case14():
    assert aead.decrypt(bytes(32), bytes(12) + h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
                        b"") == bytes(16)


def test_aead_binding_and_tamper():
    key = bytes(range(32))
    ad = aead.associated_data(version=1, run_id="r", round_index=1, stage="share_keys", sender=1, receiver=2)
    blob = aead.encrypt(key, b"share", ad)
    assert aead.decrypt(key, blob, ad) == b"share"
    ctx = dict(version=1, run_id="r", round_index=1, stage="share_keys", sender=1, receiver=2)
    for bad_ad in [aead.associated_data(**{**ctx, "round_index": 2}), aead.associated_data(**{**ctx, "receiver": 3}),
                   aead.associated_data(**{**ctx, "version": 2})]:
        with pytest.raises(IntegrityError):
            aead.decrypt(key, blob, bad_ad)
    flipped = bytearray(blob)
    flipped[15] ^= 1
    with pytest.raises(IntegrityError):
        aead.decrypt(key, bytes(flipped), ad)


# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt
def test_aes256_ctr_sp800_38a_f55():
    key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    ctr = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    p = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
          "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
    c = h("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
          "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6")
    assert Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor().update(p) == c


def test_prg_is_aes256_ctr_keystream_from_zero_counter():
    key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    block0 = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(bytes(16))
    block1 = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update((1).to_bytes(16, "big"))
    assert prg.expand(key, 8).tobytes() == block0 + block1
    acc = np.zeros(prg.CHUNK_WORDS * 2 + 5, np.uint32)  # several chunks plus a tail
    prg.apply_masks(acc, [key], [])
    np.testing.assert_array_equal(acc, prg.expand(key, acc.size))
    prg.apply_masks(acc, [], [key])
    assert not acc.any()


def test_ed25519_sign_verify():
    k = signing.generate()
    sig = signing.sign(k, b"msg")
    signing.verify(k.public_key(), sig, b"msg")
    with pytest.raises(IntegrityError):
        signing.verify(k.public_key(), sig, b"msh")


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(1, 7), extra=st.integers(0, 4), data=st.data())
def test_shamir_any_t_reconstruct_t_minus_1_do_not(secret, t, extra, data):
    xs = list(range(1, t + extra + 1))
    shares = shamir.split(secret, threshold=t, xs=xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=t, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=t) == secret
    if t > 1:
        fewer = {x: shares[x] for x in subset[:-1]}
        with pytest.raises(ValueError):
            shamir.reconstruct(fewer, threshold=t)
        try:
            assert shamir.reconstruct(fewer, threshold=t - 1) != secret
        except ValueError:
            pass  # interpolated value is not even a 32-byte string


def test_shamir_bad_args():
    with pytest.raises(ValueError):
        shamir.split(b"short", threshold=2, xs=[1, 2])
    with pytest.raises(ValueError):
        shamir.split(bytes(32), threshold=3, xs=[1, 2])
    with pytest.raises(ValueError):
        shamir.split(bytes(32), threshold=2, xs=[0, 1])

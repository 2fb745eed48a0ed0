"""CKKS primitives (secure_agg.he): security check, public context cannot decrypt, long vectors, flooding, named
errors on bad ciphertexts."""

import numpy as np
import pytest

pytest.importorskip("tenseal")

from secure_agg.errors import (DecryptionRangeError, ForeignContextError, InsecureParametersError,  # noqa: E402
                               MalformedCiphertextError, PolicyViolation, WrongLengthError)
from secure_agg.he import (CkksParams, PublicContext, SecretContext, flood, security_level)  # noqa: E402
from secure_agg.he.flooding import DEFAULT_SIGMA, csprng_gaussian  # noqa: E402

PARAMS = CkksParams()


@pytest.fixture(scope="module")
def key_holder():
    return SecretContext.create(PARAMS)


@pytest.fixture(scope="module")
def public(key_holder):
    return PublicContext(key_holder.public_bytes(), params=PARAMS)


def test_security_table():
    assert security_level(8192, [60, 40, 60]) == 128          # 160 <= 218
    assert security_level(8192, [60, 40, 40]) == 192          # NVFlare's 140 bits <= 152
    assert security_level(8192, [60] * 4) == 0                # 240 > 218
    assert security_level(4096, [40, 20, 40]) == 128          # 100 <= 109
    assert security_level(16384, [60] * 7) == 128             # 420 <= 438
    assert security_level(3000, [40, 40]) == 0
    assert PARAMS.security_bits == 128 and PARAMS.slots == 4096


@pytest.mark.parametrize("n, bits", [(8192, (60, 60, 60, 60)), (4096, (60, 60)), (16384, (60,) * 8), (2048, (30, 30))])
def test_refuses_below_128_bits(n, bits):
    with pytest.raises(InsecureParametersError, match="below 128-bit security"):
        CkksParams(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=25)
    assert issubclass(InsecureParametersError, ValueError) and issubclass(InsecureParametersError, PolicyViolation)


def test_public_context_cannot_decrypt(key_holder, public):
    import tenseal as ts

    assert public._ctx.is_public() and not public._ctx.has_secret_key()
    ct = public.encrypt(np.linspace(-0.2, 0.2, 100))
    vec = public.load(ct, dim=100)
    with pytest.raises(ValueError, match="secret_key"):
        vec.decrypt()
    # the serialized public context, reloaded fresh, cannot decrypt either
    ctx = ts.context_from(key_holder.public_bytes())
    assert not ctx.has_secret_key()
    with pytest.raises(ValueError):
        ts.ckks_vector_from(ctx, ct).decrypt()


def test_a_site_context_cannot_decrypt_another_sites_ciphertext(key_holder):
    a = PublicContext(key_holder.public_bytes(), params=PARAMS)
    b = PublicContext(key_holder.public_bytes(), params=PARAMS)
    ct_a = a.encrypt(np.full(10, 0.1))
    with pytest.raises(ValueError, match="secret_key"):
        b.load(ct_a, dim=10).decrypt()


def test_public_context_with_secret_key_is_refused(key_holder):
    with pytest.raises(InsecureParametersError, match="secret key"):
        PublicContext(key_holder.secret_bytes(), params=PARAMS)


def test_sum_of_model_sized_vectors_within_error(key_holder, public):
    """d = 164k (the tiny UNet's size class), 3 sites: error <= 1e-6 of the clip range after flooding."""
    rng = np.random.default_rng(0)
    d, clip = 164_000, 0.25
    xs = [rng.uniform(-clip, clip, d) / 3 for _ in range(3)]
    cts = [public.encrypt(x) for x in xs]
    total = public.add([public.load(c, dim=d) for c in cts])
    out = key_holder.decrypt_flooded(total, dim=d, bound=clip)
    err = np.max(np.abs(out - np.sum(xs, axis=0)))
    assert err <= 1e-6 * clip
    assert err > 0                       # flooding noise is there


def test_flooding_sigma_and_rounding():
    z = csprng_gaussian(200_000)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    out = flood(np.zeros(100_000))
    assert abs(out.std() - DEFAULT_SIGMA) < 0.05 * DEFAULT_SIGMA
    assert np.all(out * 2.0 ** 36 == np.round(out * 2.0 ** 36))
    with pytest.raises(ValueError):
        flood(np.zeros(3), sigma=0.0)


def test_malformed_and_truncated(public):
    ct = public.encrypt(np.full(50, 0.1))
    with pytest.raises(MalformedCiphertextError):
        public.load(ct[: len(ct) // 2], dim=50)
    with pytest.raises(MalformedCiphertextError):
        public.load(b"\x00" * 100, dim=50)
    with pytest.raises(MalformedCiphertextError):
        public.load(np.frombuffer(ct, dtype=np.uint8).astype(np.int16), dim=50)


def test_wrong_length(public):
    with pytest.raises(WrongLengthError):
        public.load(public.encrypt(np.full(50, 0.1)), dim=51)


def test_foreign_context(key_holder, public):
    other = SecretContext.create(CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60),
                                            scale_bits=60))
    foreign = PublicContext(other.public_bytes(), params=other.params).encrypt(np.full(50, 0.1))
    with pytest.raises((ForeignContextError, MalformedCiphertextError)):
        public.load(foreign, dim=50)
    # same parameters, another key: parses, but the decrypted sum is garbage and is never released
    same = SecretContext.create(PARAMS)
    ct = PublicContext(same.public_bytes(), params=PARAMS).encrypt(np.full(50, 0.1))
    total = public.add([public.load(ct, dim=50), public.load(public.encrypt(np.full(50, 0.1)), dim=50)])
    with pytest.raises(DecryptionRangeError):
        key_holder.decrypt_flooded(total, dim=50, bound=0.25)


def test_secret_context_roundtrip(key_holder, public):
    again = SecretContext.from_secret_bytes(key_holder.secret_bytes(), PARAMS)
    x = np.linspace(-0.1, 0.1, 30)
    assert np.max(np.abs(again.decrypt_flooded(public.encrypt(x), dim=30, bound=1.0) - x)) < 1e-7

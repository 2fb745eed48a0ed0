"""Quantization: range, unbiasedness, the documented error bound, and argument validation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secure_agg.quantize import make_quantizer


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5000), c=st.floats(1e-3, 1e3), bits=st.one_of(st.none(), st.integers(14, 32)),
       m=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_error_bound_and_no_wrap(n, c, bits, m, seed):
    q = make_quantizer(n_clients=n, clip_range=c, modulus_bits=bits)
    assert n * q.levels <= (1 << q.modulus_bits) - 1
    rng = np.random.default_rng(seed)
    m = min(m, n)
    xs = [rng.uniform(-2 * c, 2 * c, 50) for _ in range(m)]
    total = sum(q.quantize(x, rng).astype(np.uint64) for x in xs)
    assert int(total.max()) <= m * q.levels
    err = np.abs(q.dequantize_sum(total, m) - sum(np.clip(x, -c, c) for x in xs))
    assert err.max() <= q.error_bound(m) * (1 + 1e-9)


def test_unbiased():
    q = make_quantizer(n_clients=10, clip_range=1.0, modulus_bits=8)
    x = np.full(200_000, 0.1234)
    mean = q.dequantize_sum(q.quantize(x, np.random.default_rng(0)).astype(np.float64), 1).mean()
    assert abs(mean - 0.1234) < 5 * q.step / np.sqrt(x.size)


def test_validation():
    for kw in [dict(n_clients=0, clip_range=1.0), dict(n_clients=3, clip_range=0.0),
               dict(n_clients=3, clip_range=float("nan")), dict(n_clients=3, clip_range=1.0, modulus_bits=0),
               dict(n_clients=3, clip_range=1.0, modulus_bits=40), dict(n_clients=2**20, clip_range=1.0,
                                                                         modulus_bits=20)]:
        with pytest.raises(ValueError):
            make_quantizer(**kw)
    q = make_quantizer(n_clients=3, clip_range=1.0)
    with pytest.raises(TypeError):
        q.quantize(np.zeros(3), rng=None)
    with pytest.raises(ValueError):
        q.quantize(np.array([np.nan]), np.random.default_rng(0))


@settings(max_examples=15, deadline=None)
@given(d=st.sampled_from([1, 7, 32768, 32769, 65536 + 5, 100_003]), k=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_fused_quantize_and_mask_equals_separate_passes(d, k, seed):
    import os

    from secure_agg.hazmat import prg
    from secure_agg.quantize import rounding_generator
    q = make_quantizer(n_clients=7, clip_range=1.5)
    x = np.random.default_rng(seed).uniform(-2, 2, d)
    seeds = [os.urandom(32) for _ in range(k + 1)]
    rs = os.urandom(32)
    fused = q.quantize(x, rounding_generator(rs), chunk_hook=prg.MaskStreams(seeds[:1], seeds[1:]).apply)
    plain = q.quantize(x, rounding_generator(rs))
    prg.apply_masks(plain, seeds[:1], seeds[1:])
    np.testing.assert_array_equal(fused, plain)


def test_site_rounding_stream_is_unbiased_and_seeded():
    from secure_agg.quantize import RoundingStream, rounding_generator
    q = make_quantizer(n_clients=10, clip_range=1.0, modulus_bits=8)
    x = np.full(200_000, 0.1234)
    mean = q.dequantize_sum(q.quantize(x, rounding_generator(bytes(32))).astype(np.float64), 1).mean()
    assert abs(mean - 0.1234) < 5 * q.step / np.sqrt(x.size)
    a = q.quantize(x[:1000], RoundingStream(b"\x01" * 32))
    assert np.array_equal(a, q.quantize(x[:1000], RoundingStream(b"\x01" * 32)))
    assert not np.array_equal(a, q.quantize(x[:1000], RoundingStream(b"\x02" * 32)))
    assert "01" not in repr(RoundingStream(b"\x01" * 32))
    with pytest.raises(ValueError):
        RoundingStream(b"short")

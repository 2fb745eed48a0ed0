"""The FID interval: it matches torchmetrics' FID, and covers the population FID about as often as it claims."""

import numpy as np
import torch

from privfed.metrics.classifier import DomainClassifier
from privfed.metrics.fid import domain_fid, features, fid_interval, frechet, interval_from_features


def test_frechet_on_features_matches_torchmetrics():
    torch.manual_seed(0)
    clf = DomainClassifier(channels=1, image_size=8, num_classes=10).eval()
    real, fake = torch.rand(300, 1, 8, 8) * 2 - 1, torch.rand(200, 1, 8, 8) * 1.5 - 0.8
    fr, ff = features(clf, real), features(clf, fake)
    ours = frechet(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))
    assert abs(ours - domain_fid(clf, real, fake)) <= 1e-6 * max(1.0, ours)
    lo, hi = fid_interval(clf, real, fake, seed=0, resamples=50)
    assert 0 <= lo < hi


def test_interval_covers_the_population_fid():
    """60 independent samples of 400 generated feature vectors; the population FID comes from 200,000."""
    rng = np.random.default_rng(0)
    d = 16
    mix = rng.normal(size=(d, d)) / 4
    fr = rng.normal(size=(2000, d))
    big = rng.normal(size=(200_000, d)) @ mix + 0.3
    population = frechet(fr.mean(0), np.cov(fr, rowvar=False), big.mean(0), np.cov(big, rowvar=False))
    mu_r, cov_r = fr.mean(0), np.cov(fr, rowvar=False)
    covered, percentile_covered, widths = 0, 0, []
    for t in range(60):
        ff = rng.normal(size=(400, d)) @ mix + 0.3
        lo, hi = interval_from_features(fr, ff, seed=t)
        covered += lo <= population <= hi
        widths.append(hi - lo)
        # the plain percentile interval of the same 200 resamples, for comparison
        boot = np.random.default_rng(t)
        draws = [frechet(mu_r, cov_r, s.mean(0), np.cov(s, rowvar=False))
                 for s in (ff[boot.integers(0, 400, 400)] for _ in range(200))]
        q_lo, q_hi = np.quantile(draws, [0.025, 0.975])
        percentile_covered += q_lo <= population <= q_hi
    assert covered >= 54            # ≥ 90 % at a nominal 95 % (measured: 58 of 60)
    assert percentile_covered <= 45  # why the basic interval: the percentile one misses (measured: 39 of 60)
    assert np.median(widths) < 0.3 * population   # and it is not covering by being uselessly wide

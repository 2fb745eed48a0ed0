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
    covered, widths = 0, []
    for t in range(60):
        ff = rng.normal(size=(400, d)) @ mix + 0.3
        lo, hi = interval_from_features(fr, ff, seed=t)
        covered += lo <= population <= hi
        widths.append(hi - lo)
    assert covered >= 54            # ≥ 90 % at a nominal 95 % (measured: 58 of 60)
    assert np.median(widths) < 0.3 * population   # and it is not covering by being uselessly wide

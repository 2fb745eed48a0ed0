"""Fréchet distance in the domain classifier's feature space, computed by torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from privfed.metrics.classifier import DomainClassifier, feature_extractor


@torch.no_grad()
def domain_fid(clf: DomainClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID (unitless) between real and generated images in [-1, 1], using 64-d classifier features."""
    metric = FrechetInceptionDistance(feature=feature_extractor(clf), normalize=True)
    metric.update(real.float().cpu(), real=True)
    metric.update(fake.float().cpu(), real=False)
    return float(metric.compute())


@torch.no_grad()
def class_histogram(clf: DomainClassifier, images: torch.Tensor) -> list[int]:
    """How many images the classifier assigns to each class (a mode-collapse check for generated samples)."""
    pred = clf(images.float().cpu()).argmax(1)
    return torch.bincount(pred, minlength=clf.meta["num_classes"]).tolist()

"""A small CNN trained once on the real training split; its penultimate layer is the FID feature space."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from privfed.data.dataset import ImageDataset
from privfed.rundir import atomic_write_text

FEATURES = 64


class DomainClassifier(nn.Module):
    """Conv-conv-pool-dense classifier for small images; `features(x)` is a 64-d embedding."""

    def __init__(self, *, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.meta = {"channels": channels, "image_size": image_size, "num_classes": num_classes}
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)
        self.num_features = FEATURES

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _FeatureView(nn.Module):
    """torchmetrics calls the feature extractor directly; this exposes only the embedding."""

    def __init__(self, clf: DomainClassifier) -> None:
        super().__init__()
        self.clf = clf
        self.num_features = FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.features(x)


def train_domain_classifier(train: ImageDataset, *, seed: int, epochs: int = 15,
                            batch_size: int = 64) -> DomainClassifier:
    """Fit the classifier on real training images (light augmentation-free Adam training)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = DomainClassifier(channels=train.channels, image_size=train.size, num_classes=train.num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    n = len(train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(clf(train.images[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(clf: DomainClassifier, ds: ImageDataset) -> float:
    """Top-1 accuracy (fraction in [0, 1]) on a labelled dataset."""
    pred = torch.cat([clf(ds.images[i:i + 1024]).argmax(1) for i in range(0, len(ds), 1024)])
    return float((pred == ds.labels).float().mean())


def load_or_train_classifier(path: Path, train: ImageDataset, *, seed: int) -> DomainClassifier:
    """Cache the classifier in the run directory so resumed runs and audits use the same feature space."""
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        clf = DomainClassifier(**meta)
        clf.load_state_dict(load_file(str(path)))
        return clf.eval()
    clf = train_domain_classifier(train, seed=seed)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp))
    tmp.replace(path)
    atomic_write_text(meta_path, json.dumps(clf.meta))
    return clf


def feature_extractor(clf: DomainClassifier) -> nn.Module:
    return _FeatureView(clf)


__all__ = ["DomainClassifier", "train_domain_classifier", "accuracy", "load_or_train_classifier",
           "feature_extractor"]

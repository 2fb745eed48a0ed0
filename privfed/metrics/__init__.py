"""Utility metrics that need no downloads: domain-feature FID, classifier accuracy, class histograms, grids."""

from privfed.metrics.classifier import DomainClassifier, train_domain_classifier, load_or_train_classifier
from privfed.metrics.fid import domain_fid
from privfed.metrics.grid import save_grid

__all__ = ["DomainClassifier", "train_domain_classifier", "load_or_train_classifier", "domain_fid", "save_grid"]

"""Issue 15, evaluation without pooling: the FID feature extractor is trained on public typeset digits (digits) or
on the declared test split (any other dataset), never on a site's training images; its provenance is recorded."""

import pytest
import torch

import privfed.metrics.classifier as C
from privfed.config import DataConfig
from privfed.data import load_dataset


@pytest.fixture
def trained_on(monkeypatch, tmp_path):
    """Record what the classifier is trained on (training itself replaced by an untrained network: fast)."""
    seen = []

    def fake_train(train, *, seed, augment=False, **_):
        seen.append((train, augment))
        return C.DomainClassifier(channels=train.channels, image_size=train.size, num_classes=train.num_classes)

    monkeypatch.setattr(C, "train_domain_classifier", fake_train)
    monkeypatch.setenv("PRIVFED_CACHE", str(tmp_path / "user-cache"))
    return seen


def _rows(images):
    return {bytes(x.numpy().tobytes()) for x in images.float()}


def test_digits_extractor_is_trained_on_public_typeset_digits_once(trained_on, tmp_path):
    splits = load_dataset(DataConfig(dataset="digits"), seed=3)
    clf, prov = C.evaluation_classifier(tmp_path / "run" / "cache" / "domain_classifier.safetensors", "digits",
                                        splits.test, seed=1)
    [(data, augment)] = trained_on
    assert data.name == "typeset-digits" and len(data) == C.PUBLIC_CLASSIFIER_IMAGES and augment
    assert not (_rows(data.images) & _rows(splits.train.images))        # no site image among them
    assert prov["class"] == "public" and prov["image_count"] == 4000 and prov["sha256"] == C.dataset_sha256(data)
    assert prov["sha256"] != C.dataset_sha256(splits.train)
    # a second run (another seed, another run directory) reuses the public extractor: same feature space, no training
    clf2, prov2 = C.evaluation_classifier(tmp_path / "run2" / "cache" / "domain_classifier.safetensors", "digits",
                                          splits.test, seed=2)
    assert len(trained_on) == 1 and prov2 == prov
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), clf2.state_dict().values()))
    assert (tmp_path / "run2" / "cache" / "domain_classifier.provenance.json").is_file()


def test_other_datasets_use_the_declared_test_split_never_the_training_split(trained_on, tmp_path, shared_npz):
    splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=3)
    _, prov = C.evaluation_classifier(tmp_path / "cache" / "domain_classifier.safetensors", "npz", splits.test,
                                      seed=1)
    [(data, augment)] = trained_on
    assert data is splits.test and not augment
    assert prov["class"] == "declared" and prov["image_count"] == len(splits.test)
    assert prov["sha256"] == C.dataset_sha256(splits.test) != C.dataset_sha256(splits.train)
    assert "test split" in prov["source"]


def test_a_resumed_run_from_before_keeps_its_extractor_and_says_how_it_was_trained(trained_on, tmp_path):
    splits = load_dataset(DataConfig(dataset="digits"), seed=3)
    path = tmp_path / "cache" / "domain_classifier.safetensors"
    old = C.load_or_train_classifier(path, splits.train, seed=1)     # what runs before issue 15 cached
    assert trained_on[0][0] is splits.train
    clf, prov = C.evaluation_classifier(path, "digits", splits.test, seed=1)
    assert len(trained_on) == 1 and prov["class"] == "unaccounted" and "pooled" in prov["source"]
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), old.state_dict().values()))

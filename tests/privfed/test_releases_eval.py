"""Issue 15, evaluation without pooling: the FID feature extractor is trained on public typeset digits (digits) or
on the declared test split (any other dataset), never on a site's training images; its provenance is recorded."""

import pytest
import torch

import privfed.metrics.classifier as C
from privfed.config import DataConfig
from audits.artifact_hash import sha256_path
from privfed.data import load_dataset
from privfed.data.dataset import ImageDataset
from privfed.errors import RunDirError


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
                                        splits.test)
    [(data, augment)] = trained_on
    assert data.name == "typeset-digits" and len(data) == C.PUBLIC_CLASSIFIER_IMAGES and augment
    assert not (_rows(data.images) & _rows(splits.train.images))        # no site image among them
    assert prov["class"] == "public" and prov["image_count"] == 4000 and prov["sha256"] == C.dataset_sha256(data)
    assert prov["sha256"] != C.dataset_sha256(splits.train)
    # a second run (another seed, another run directory) reuses the public extractor: same feature space, no training
    clf2, prov2 = C.evaluation_classifier(tmp_path / "run2" / "cache" / "domain_classifier.safetensors", "digits",
                                          splits.test)
    assert len(trained_on) == 1 and prov2 == prov
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), clf2.state_dict().values()))
    assert (tmp_path / "run2" / "cache" / "domain_classifier.provenance.json").is_file()


def test_other_datasets_use_the_declared_test_split_never_the_training_split(trained_on, tmp_path, shared_npz):
    splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=3)
    _, prov = C.evaluation_classifier(tmp_path / "cache" / "domain_classifier.safetensors", "npz", splits.test)
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
    clf, prov = C.evaluation_classifier(path, "digits", splits.test)
    assert len(trained_on) == 1 and prov["class"] == "unaccounted" and "pooled" in prov["source"]
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), old.state_dict().values()))


def test_every_seed_shares_one_declared_split_extractor_trained_once(trained_on, tmp_path, shared_npz):
    """Issue 18 item 4: the extractor is a public artefact of its own configuration, not of the run's seed; runs on
    one dataset measure FID in one feature space."""
    provs = []
    for seed in (0, 1, 2):
        splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=seed)
        _, prov = C.evaluation_classifier(tmp_path / f"run{seed}" / "cache" / "domain_classifier.safetensors", "npz",
                                          splits.test)
        provs.append(prov)
    assert len(trained_on) == 1 and trained_on[0][0].name == splits.test.name
    assert provs[0] == provs[1] == provs[2]
    assert provs[0]["material"]["seed"] == C.EXTRACTOR_SEED and provs[0]["material"]["data"]["sha256"] == \
        C.dataset_sha256(splits.test)
    from privfed.cache import config_key

    assert provs[0]["key"] == config_key(provs[0]["material"])
    for seed in (0, 1, 2):
        assert sha256_path(tmp_path / f"run{seed}" / "cache" / "domain_classifier.safetensors") == \
            provs[0]["weights_sha256"]


def test_a_tampered_cache_entry_is_retrained_not_used(trained_on, tmp_path, shared_npz):
    splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=0)
    _, prov = C.evaluation_classifier(tmp_path / "run0" / "domain_classifier.safetensors", "npz", splits.test)
    entry = tmp_path / "user-cache" / "classifiers" / prov["key"] / "domain_classifier.safetensors"
    entry.write_bytes(entry.read_bytes()[:-8] + b"\0" * 8)
    _, prov2 = C.evaluation_classifier(tmp_path / "run1" / "domain_classifier.safetensors", "npz", splits.test)
    assert len(trained_on) == 2 and prov2["weights_sha256"] == sha256_path(entry) == \
        sha256_path(tmp_path / "run1" / "domain_classifier.safetensors")


def test_a_resumed_run_refuses_an_extractor_changed_since_it_started(trained_on, tmp_path):
    splits = load_dataset(DataConfig(dataset="digits"), seed=0)
    path = tmp_path / "run" / "cache" / "domain_classifier.safetensors"
    clf, _ = C.evaluation_classifier(path, "digits", splits.test)
    again, _ = C.evaluation_classifier(path, "digits", splits.test)      # resume: the run's own copy
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    state = {k: v + 1 for k, v in clf.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(RunDirError, match="weights_sha256"):
        C.evaluation_classifier(path, "digits", splits.test)


def test_training_gives_the_same_bytes_whatever_the_thread_count(shared_npz):
    """An auditor recomputing the extractor from its recorded material gets the run's weights: training runs on one
    thread (two threads summed differently, measured) and leaves the caller's thread count as it was."""
    splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=0)
    small = ImageDataset(splits.test.images[:96], splits.test.labels[:96], splits.test.class_names, "small")
    before = torch.get_num_threads()
    out = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        clf = C._train_reproducibly(small, seed=C.EXTRACTOR_SEED, augment=True)
        assert torch.get_num_threads() == threads
        out.append(clf.state_dict())
    torch.set_num_threads(before)
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])

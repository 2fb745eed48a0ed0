import hashlib

import numpy as np
import pytest
from PIL import Image

from privfed.config import DataConfig
from privfed.data import load_dataset
from privfed.data.medmnist_npz import load_medmnist_npz
from privfed.errors import DataError


def test_shared_pneumoniamnist_npz(shared_npz):
    assert hashlib.sha256(shared_npz.read_bytes()).hexdigest().startswith("f36c2b3e34de9d60")
    splits = load_dataset(DataConfig(dataset="npz", path=str(shared_npz)), seed=0)
    assert tuple(splits.train.images.shape) == (2428, 1, 28, 28)
    assert tuple(splits.test.images.shape) == (468, 1, 28, 28)
    assert splits.train.images.min() >= -1 and splits.train.images.max() <= 1
    assert splits.train.num_classes == 2
    assert splits.train.labels.bincount().tolist() == [1214, 1214]
    raw = np.load(shared_npz)["train_images"][0]
    assert np.allclose((splits.train.images[0, 0].numpy() + 1) * 127.5, raw, atol=1e-3)


def test_medmnist_name_with_local_file(shared_npz):
    splits = load_dataset(DataConfig(dataset="pneumoniamnist", path=str(shared_npz)), seed=0)
    assert len(splits.train) == 2428


def test_rgb_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.npz"
    np.savez(p, train_images=rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8),
             train_labels=rng.integers(0, 4, (20, 1)), test_images=rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8),
             test_labels=rng.integers(0, 4, (6, 1)))
    s = load_medmnist_npz(p)
    assert tuple(s.train.images.shape) == (20, 3, 28, 28) and s.train.channels == 3


@pytest.mark.parametrize("case,match", [
    ("missing", "not found"), ("corrupt", "not a readable"), ("keys", "missing MedMNIST key"),
    ("shape", "N×H×W"), ("rows", "rows"), ("dtype", "uint8"),
])
def test_bad_npz(tmp_path, case, match):
    p = tmp_path / "bad.npz"
    img = np.zeros((4, 8, 8), np.uint8)
    lab = np.zeros((4, 1), int)
    if case == "corrupt":
        p.write_bytes(b"PK\x03\x04 this is not a zip")
    elif case == "keys":
        np.savez(p, images=img, labels=lab)
    elif case == "shape":
        np.savez(p, train_images=np.zeros((4, 8), np.uint8), train_labels=lab, test_images=img, test_labels=lab)
    elif case == "rows":
        np.savez(p, train_images=img, train_labels=lab[:3], test_images=img, test_labels=lab)
    elif case == "dtype":
        np.savez(p, train_images=img.astype(np.float32), train_labels=lab, test_images=img, test_labels=lab)
    with pytest.raises(DataError, match=match):
        load_medmnist_npz(p)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("normal", "effusion"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "normal" / "notes.txt").write_text("ignored")
    s = load_dataset(DataConfig(dataset="folder", path=str(tmp_path), image_size=16, test_fraction=0.2), seed=0)
    assert s.train.class_names == ("effusion", "normal")
    assert len(s.train) + len(s.test) == 20 and len(s.test) == 4
    assert tuple(s.train.images.shape[1:]) == (1, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path)), seed=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path)), seed=0)


def test_digits_default():
    s = load_dataset(DataConfig(), seed=0)
    assert len(s.train) + len(s.test) == 1797
    assert tuple(s.train.images.shape[1:]) == (1, 8, 8)
    assert set(s.test.labels.tolist()) == set(range(10))

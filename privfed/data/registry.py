"""Resolve a DataConfig into train/test splits."""

from __future__ import annotations

from pathlib import Path

from privfed.config import DataConfig
from privfed.data.dataset import DatasetSplits
from privfed.data.digits import load_digits_splits
from privfed.data.image_folder import load_image_folder
from privfed.data.medmnist_npz import download_medmnist, load_medmnist_npz
from privfed.errors import DataError

MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")


def load_dataset(cfg: DataConfig, *, seed: int, cache_dir: str | Path | None = None) -> DatasetSplits:
    """Load the configured dataset. MedMNIST flags download only here, only when asked, through `medmnist`."""
    if cfg.dataset == "digits":
        return load_digits_splits(test_fraction=cfg.test_fraction, seed=seed, val_fraction=cfg.val_fraction)
    if cfg.dataset == "npz":
        return load_medmnist_npz(cfg.path)
    if cfg.dataset == "folder":
        return load_image_folder(cfg.path, image_size=cfg.image_size, test_fraction=cfg.test_fraction, seed=seed,
                                 val_fraction=cfg.val_fraction)
    if cfg.dataset in MEDMNIST_2D:
        if cfg.path:
            return load_medmnist_npz(cfg.path, name=cfg.dataset)
        root = Path(cache_dir or Path.home() / ".medmnist")
        local = root / f"{cfg.dataset}.npz"
        path = local if local.is_file() else download_medmnist(cfg.dataset, root=root)
        return load_medmnist_npz(path, name=cfg.dataset)
    raise DataError(
        f"unknown dataset {cfg.dataset!r}; use digits, npz (--data FILE.npz), folder (--data DIR) "
        f"or a MedMNIST name ({', '.join(MEDMNIST_2D)})"
    )

"""Datasets (bundled digits, MedMNIST .npz, image folders) and client partitioners."""

from privfed.data.dataset import ImageDataset, DatasetSplits
from privfed.data.registry import load_dataset
from privfed.data.partition import partition_indices, client_summary

__all__ = ["ImageDataset", "DatasetSplits", "load_dataset", "partition_indices", "client_summary"]

"""Datasets held in memory as uint8 tensors, their splits, and batched augmentation.

Your own data: `from_tensors(x_train, y_train, x_test, y_test, classes=...)` or
`from_torch(train_dataset, test_dataset)`; `register_dataset(name, make)` (or a plugin's
`mtkd.datasets` entry point) makes a dataset known by name to configs, studies and the CLI.
"""

from mtkd.data.base import Dataset, ImageSet
from mtkd.data.catalog import DATASETS, describe_datasets, load_dataset, register_dataset
from mtkd.data.convert import as_dataset, from_tensors, from_torch

__all__ = [
    "DATASETS",
    "Dataset",
    "ImageSet",
    "as_dataset",
    "describe_datasets",
    "from_tensors",
    "from_torch",
    "load_dataset",
    "register_dataset",
]

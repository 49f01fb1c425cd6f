"""Datasets held in memory as uint8 tensors, their splits, and batched augmentation."""

from mtkd.data.base import Dataset, ImageSet
from mtkd.data.catalog import DATASETS, describe_datasets, load_dataset

__all__ = ["DATASETS", "Dataset", "ImageSet", "describe_datasets", "load_dataset"]

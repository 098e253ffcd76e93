"""Datasets. ``reglab.data.cifar10`` loads CIFAR-10 as verified uint8 NCHW tensors."""

from reglab.data.cifar10 import (
    ARCHIVE,
    BINARY_MD5,
    CIFAR10,
    CLASSES,
    MEAN,
    PYTHON_MD5,
    STD,
    DataError,
    default_data_dir,
    load_cifar10,
    resolve_data_dir,
)

__all__ = [
    "ARCHIVE",
    "BINARY_MD5",
    "CIFAR10",
    "CLASSES",
    "MEAN",
    "PYTHON_MD5",
    "STD",
    "DataError",
    "default_data_dir",
    "load_cifar10",
    "resolve_data_dir",
]

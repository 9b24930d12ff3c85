"""The held-out validation split: which training images `hpcsweep prepare` keeps out of training.

Checkpoint selection, time to target and every other choice read `val/acc`; measured on the test
split, those choices would tune to the test split. So `data.val_size` images of the official
training split are held out, class-balanced (`val_size // 10` per class, the remainder one more
each for the first classes), drawn with a fixed seed of their own: every run of a study, whatever
its `train.seed`, validates on the same images. The split is recorded by the sha256 of its sorted
int64 indices into the official training split, so two prepared folders can be compared at a glance.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hpcsweep.data.cifar10 import CLASSES, Split
from hpcsweep.errors import UserError

VALIDATION_SEED = 15  # fixed for good: changing it changes every prepared validation split


def per_class_counts(val_size: int) -> list[int]:
    """How many images each class gives: an equal share, the remainder to the first classes."""
    share, remainder = divmod(val_size, len(CLASSES))
    return [share + (index < remainder) for index in range(len(CLASSES))]


def class_sizes(labels: np.ndarray) -> list[int]:
    return [int(np.sum(labels == index)) for index in range(len(CLASSES))]


def largest_val_size(labels: np.ndarray) -> int:
    """The largest val_size that leaves every class at least one training image."""
    spare = [size - 1 for size in class_sizes(labels)]
    share = min(spare)
    remainder = next(index for index, count in enumerate(spare) if count == share)  # classes that give one more
    return max(0, share * len(CLASSES) + remainder)


def validation_indices(labels: np.ndarray, val_size: int) -> np.ndarray:
    """Sorted int64 indices into the training split of a class-balanced sample of `val_size` images."""
    wanted = per_class_counts(val_size)
    for name, count, size in zip(CLASSES, wanted, class_sizes(labels)):
        if count and count >= size:
            raise UserError(
                f"data.val_size={val_size} holds out {count} images of class {name!r}, which has {size} "
                f"training images and needs one left for training; the largest valid data.val_size is "
                f"{largest_val_size(labels)}"
            )
    rng = np.random.default_rng(VALIDATION_SEED)
    chosen = [rng.permutation(np.flatnonzero(labels == index))[:count] for index, count in enumerate(wanted)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def indices_sha256(indices: np.ndarray) -> str:
    """The split's identity: sha256 of its sorted indices as little-endian int64."""
    return hashlib.sha256(np.sort(indices).astype("<i8").tobytes()).hexdigest()


def hold_out(train: Split, val_size: int) -> tuple[Split, Split, np.ndarray]:
    """The training split without the validation images, the validation images, and their indices."""
    indices = validation_indices(train.labels, val_size)
    kept = np.ones(len(train.labels), dtype=bool)
    kept[indices] = False
    remaining = Split(train.images[kept], train.labels[kept])
    return remaining, Split(train.images[indices], train.labels[indices]), indices

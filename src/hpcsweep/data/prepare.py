"""Turn the raw archive into what training reads: uint8 tensors and per-channel statistics.

`val_size` images of the official training split are held out as `val.pt` (validation.py: class
balanced, the same whatever the training seed); the rest is `train.pt`, and the official test
split `test.pt` (images N x 3 x 32 x 32 uint8, labels int64). Training puts them on the device once
and normalises there with `stats.json`'s mean and std, computed from the remaining training images
only so that nothing of the validation or test split leaks into training. stats.json also counts
each split's images and records the validation split (its size and the sha256 of its indices).
With val_size 0 there is no `val.pt` and training validates on the test split, as before.
The folder is built under a temporary name and renamed into place: a failed prepare leaves the
previous output untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hpcsweep.atomic import atomic_dir
from hpcsweep.data.cifar10 import ARCHIVE_NAME, CLASSES, Split, read_archive
from hpcsweep.data.stats import SPLIT_FILES, STATS_FILE
from hpcsweep.data.validation import hold_out, indices_sha256
from hpcsweep.errors import UserError


def prepare(raw_dir: Path, out_dir: Path, val_size: int) -> dict:
    """Read and validate the archive in `raw_dir`, hold out `val_size` training images for
    validation, write tensors and stats to `out_dir`."""
    archive = Path(raw_dir) / ARCHIVE_NAME
    if not archive.is_file():
        raise UserError(f"{archive}: not found; run `hpcsweep download` first (or --raw DIR)")
    official = read_archive(archive)
    train, val, indices = hold_out(official["train"], val_size)
    splits = {"train": train, "val": val, "test": official["test"]}
    stats = {
        **channel_stats(train.images),
        "classes": list(CLASSES),
        "images": {name: int(len(split.labels)) for name, split in splits.items()},
        "validation": {"size": int(len(indices)), "indices_sha256": indices_sha256(indices)},
    }
    with atomic_dir(Path(out_dir)) as staging:
        for name, split in splits.items():
            if name != "val" or val_size:  # no validation split: no val.pt
                save_split(split, staging / SPLIT_FILES[name])
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    print(f"prepared {archive} -> {out_dir}: " + ", ".join(f"{n} {c}" for n, c in stats["images"].items()))
    return stats


def channel_stats(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in float64, chunk by chunk."""
    total = np.zeros(images.shape[1])
    total_squares = np.zeros(images.shape[1])
    for start in range(0, len(images), 10_000):
        chunk = images[start : start + 10_000].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(total_squares / count - np.square(mean))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def save_split(split: Split, path: Path) -> None:
    torch.save({"images": torch.from_numpy(split.images.copy()), "labels": torch.from_numpy(split.labels)}, path)

"""A tiny CIFAR-10 archive in the exact official layout, for tests.

Same members, pickle protocol and keys as cifar-10-python.tar.gz, but `per_batch` images per
batch instead of 10,000. Each class is a fixed random picture plus noise, so a model can learn it
in a few steps and a test can tell learning from chance. Keyword arguments break one thing on
purpose, for the corrupt-input tests.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
# data.val_size for the synthetic archive: 5 of each class's ~30 training images held out, so
# every training in the tests validates on a split of its own (300 train images -> 250 + 50)
VAL_SIZE = 50


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    prototypes = np.random.default_rng(1234).integers(0, 256, size=(10, 3, 32, 32))
    noise = rng.integers(0, 256, size=(len(labels), 3, 32, 32))
    return (0.7 * prototypes[labels] + 0.3 * noise).astype(np.uint8)


def batch(count: int, rng: np.random.Generator, name: str, *, bad_shape: bool, bad_label: bool) -> dict:
    labels = rng.integers(0, 10, size=count)
    data = synthetic_images(labels, rng).reshape(count, -1)
    if bad_shape:
        data = data[:, :1024]
    labels = [int(x) for x in labels]
    if bad_label:
        labels[0] = 10
    return {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(count)],
    }


def write_archive(
    path: Path,
    per_batch: int = 60,
    seed: int = 0,
    *,
    drop: str | None = None,
    bad_shape: str | None = None,
    bad_label: str | None = None,
) -> Path:
    """Write the archive; `drop` leaves a member out, `bad_shape`/`bad_label` break one batch."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {
        name: batch(per_batch, rng, name, bad_shape=name == bad_shape, bad_label=name == bad_label) for name in BATCHES
    }
    members["batches.meta"] = {
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
        b"label_names": [c.encode() for c in CLASSES],
    }
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, content in members.items():
            if name == drop:
                continue
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path

"""The prepared folder read back and checked: `train.pt`, `val.pt` (if any), `test.pt`, `stats.json`.

prepare.py writes them; every training reads them, on every rank. A file damaged since (a copy
cut short, a full disk, an edit by hand) must fail as one line naming the file before an MLflow
run exists, not as a traceback inside `trainer.fit` that leaves a FAILED run behind:
`check_prepared` is that check, cheap enough for every start (the tensors are memory-mapped, so
only their headers and the labels are read). The loader reads through the same functions.
A folder prepared before the validation split existed (no `images.val`, no `validation`) is
refused the same way: prepare it again, since every training now validates on its own split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hpcsweep.data.cifar10 import CLASSES, IMAGE_SHAPE
from hpcsweep.data.stats import PREPARE_AGAIN, SPLIT_FILES, STATS_FILE, first_line, read_stats
from hpcsweep.errors import UserError


def check_prepared(prepared_dir: Path) -> dict:
    """Check every prepared file and that they agree with each other; returns the stats."""
    stats = read_stats(prepared_dir)
    for split, name in SPLIT_FILES.items():
        path, count = Path(prepared_dir) / name, stats["images"][split]
        if split == "val" and not count:  # no validation split, so no val.pt either
            if path.exists():
                raise UserError(f"{path}: present, but {STATS_FILE} counts 0 validation images; {PREPARE_AGAIN}")
            continue
        _, labels = read_split(prepared_dir, split, mmap=True)
        if len(labels) != count:
            raise UserError(f"{path}: {len(labels)} images, but {STATS_FILE} counts {count}; {PREPARE_AGAIN}")
    return stats


def evaluation_splits(stats: dict) -> tuple[str, ...]:
    """The splits a training evaluates every epoch, in order: its `val/*` split first, then the
    split it reports as `test/*`; without a validation split, the test split stands in as `val/*`."""
    return ("val", "test") if stats["images"]["val"] else ("test",)


def read_split(prepared_dir: Path, split: str, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images (N x 3 x 32 x 32 uint8) and labels (N int64, each a class index)."""
    path = Path(prepared_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise UserError(f"{path}: not found; run `hpcsweep prepare` first (or set data.prepared_dir)")
    try:
        tensors = torch.load(path, weights_only=True, mmap=mmap)
    except Exception as error:  # a damaged file fails in many ways inside torch.load, all of them the data's
        raise UserError(f"{path}: not a readable prepared split ({first_line(error)}); {PREPARE_AGAIN}") from None
    problem = split_problem(tensors)
    if problem:
        raise UserError(f"{path}: {problem}; {PREPARE_AGAIN}")
    return tensors["images"], tensors["labels"]


def split_problem(tensors: object) -> str | None:
    if not isinstance(tensors, dict):
        return f"holds {type(tensors).__name__}; expected a dict of images and labels"
    images, labels = tensors.get("images"), tensors.get("labels")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        return f"images are {tensor_words(images)}; expected uint8 N x {' x '.join(map(str, IMAGE_SHAPE))}"
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (len(images),):
        return f"labels are {tensor_words(labels)}; expected int64 ({len(images)},), one per image"
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        return f"labels range {labels.min()}..{labels.max()}; expected 0..{len(CLASSES) - 1}"
    return None


def tensor_words(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    return type(value).__name__

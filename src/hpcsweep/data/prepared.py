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

import json
import math
import re
from pathlib import Path

import torch

from hpcsweep.data.cifar10 import CLASSES, IMAGE_SHAPE
from hpcsweep.data.prepare import SPLIT_FILES, STATS_FILE
from hpcsweep.errors import UserError

PREPARE_AGAIN = "run `hpcsweep prepare` again"


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


def check_val_size(val_size: int, stats: dict, prepared_dir: Path) -> None:
    """A config whose data.val_size is not the one the folder was prepared with would validate
    on another split than it asks for: refused before any run exists."""
    prepared_with = stats["validation"]["size"]
    if val_size != prepared_with:
        raise UserError(
            f"data.val_size={val_size} but {prepared_dir} was prepared with {prepared_with}; "
            f"run `hpcsweep prepare` again (dvc repro prepare)"
        )


def read_stats(prepared_dir: Path) -> dict:
    """stats.json: per-channel mean and std, the class names, each split's image count and the
    validation split's size and indices_sha256."""
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; run `hpcsweep prepare` first (or set data.prepared_dir)")
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not readable as JSON ({first_line(error)}); {PREPARE_AGAIN}") from None
    problem = stats_problem(stats)
    if problem:
        raise UserError(f"{path}: {problem}; {PREPARE_AGAIN}")
    return stats


def stats_problem(stats: object) -> str | None:
    if not isinstance(stats, dict):
        return f"holds {type(stats).__name__}; expected an object with mean, std, classes and images"
    for key in ("mean", "std"):
        values = stats.get(key)
        if not is_channel_values(values) or (key == "std" and min(values) <= 0):
            return f"{key}={short(values)}; expected 3 finite numbers" + (", each > 0" if key == "std" else "")
    if stats.get("classes") != list(CLASSES):
        return f"classes={short(stats.get('classes'))}; expected {list(CLASSES)}"
    counts, validation = stats.get("images"), stats.get("validation")
    if isinstance(counts, dict) and "val" not in counts or "validation" not in stats:
        return "prepared before the validation split existed (no images.val or validation)"
    if not isinstance(counts, dict) or not all(is_count(counts.get(split)) for split in SPLIT_FILES):
        return f"images={short(counts)}; expected the image count of each of {', '.join(SPLIT_FILES)}"
    if (
        not isinstance(validation, dict)
        or validation.get("size") != counts["val"]
        or not re.fullmatch(r"[0-9a-f]{64}", str(validation.get("indices_sha256")))
    ):
        return f"validation={short(validation)}; expected the size {counts['val']} and the indices' sha256"
    return None


def is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def is_channel_values(values: object) -> bool:
    return (
        isinstance(values, list)
        and len(values) == IMAGE_SHAPE[0]
        and all(type(value) in (int, float) and math.isfinite(value) for value in values)
    )


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


def first_line(error: Exception) -> str:
    """The first line of an exception's text, short: torch's own messages run to paragraphs."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return short(lines[0], 200)


def short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

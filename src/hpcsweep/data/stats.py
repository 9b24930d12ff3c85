"""stats.json read back and checked, without torch: what a launch checks before it creates anything.

prepare.py writes it beside the tensors; every training reads it (prepared.py), and so does
`hpcsweep grid`, which must tell a grid whose data.val_size differs from the prepared folder's
before any run exists, and stay quick to start: a launch that imported torch for one JSON file
would pay seconds for nothing.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from hpcsweep.data.cifar10 import CLASSES, IMAGE_SHAPE
from hpcsweep.errors import UserError

STATS_FILE = "stats.json"
SPLIT_FILES = {"train": "train.pt", "val": "val.pt", "test": "test.pt"}
PREPARE_AGAIN = "run `hpcsweep prepare` again"


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


def first_line(error: Exception) -> str:
    """The first line of an exception's text, short: torch's own messages run to paragraphs."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return short(lines[0], 200)


def short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

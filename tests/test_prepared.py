"""The prepared folder read back: a damaged train.pt, val.pt, test.pt or stats.json, or a folder
prepared before the validation split existed, is one line naming the file, and `hpcsweep train`
says so before any MLflow run exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.runs import QUICK, hpcsweep, overrides, runs_of
from helpers.synthetic import VAL_SIZE
from hpcsweep.data.prepared import check_prepared
from hpcsweep.errors import UserError


def rewrite_stats(prepared: Path, **changes) -> None:
    stats = json.loads((prepared / "stats.json").read_text())
    (prepared / "stats.json").write_text(json.dumps({**stats, **changes}))


def resave_train(prepared: Path, **changes) -> None:
    tensors = torch.load(prepared / "train.pt", weights_only=True)
    torch.save({**tensors, **changes}, prepared / "train.pt")


def without_keys(prepared: Path, *keys: str) -> None:
    """stats.json as a prepare from before the validation split wrote it."""
    stats = json.loads((prepared / "stats.json").read_text())
    stats["images"].pop("val")
    (prepared / "stats.json").write_text(json.dumps({k: v for k, v in stats.items() if k not in keys}))


TRAIN = 300 - VAL_SIZE  # the synthetic archive's training images left after the validation split


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "train.pt cut in half": (lambda p: truncate(p / "train.pt"), "train.pt", "not a readable prepared split"),
    "train.pt empty": (lambda p: (p / "train.pt").write_bytes(b""), "train.pt", "not a readable prepared split"),
    "test.pt text": (lambda p: (p / "test.pt").write_text("hello\n"), "test.pt", "not a readable prepared split"),
    "train.pt holds code": (
        lambda p: torch.save({"images": Path("x")}, p / "train.pt"),
        "train.pt",
        "not a readable prepared split (Weights only load failed",
    ),
    "float images": (
        lambda p: resave_train(p, images=torch.zeros(TRAIN, 3, 32, 32)),
        "train.pt",
        f"images are float32 ({TRAIN}, 3, 32, 32); expected uint8 N x 3 x 32 x 32",
    ),
    "float labels": (
        lambda p: resave_train(p, labels=torch.zeros(TRAIN)),
        "train.pt",
        f"labels are float32 ({TRAIN},); expected int64 ({TRAIN},), one per image",
    ),
    "label out of range": (
        lambda p: resave_train(p, labels=torch.full((TRAIN,), 10)),
        "train.pt",
        "labels range 10..10; expected 0..9",
    ),
    "stats.json cut": (
        lambda p: truncate(p / "stats.json"),
        "stats.json",
        "not readable as JSON",
    ),
    "stats.json a list": (lambda p: (p / "stats.json").write_text("[]"), "stats.json", "holds list"),
    "stats.json NaN mean": (
        lambda p: rewrite_stats(p, mean=[float("nan")] * 3),
        "stats.json",
        "mean=[nan, nan, nan]; expected 3 finite numbers",
    ),
    "stats.json zero std": (lambda p: rewrite_stats(p, std=[0.2, 0.0, 0.2]), "stats.json", "each > 0"),
    "stats.json counts text": (
        lambda p: rewrite_stats(p, images={"train": "300", "val": VAL_SIZE, "test": 60}),
        "stats.json",
        f"images={{'train': '300', 'val': {VAL_SIZE}, 'test': 60}}; expected the image count",
    ),
    "counts disagree": (
        lambda p: rewrite_stats(p, images={"train": 50000, "val": VAL_SIZE, "test": 60}),
        "train.pt",
        f"{TRAIN} images, but stats.json counts 50000",
    ),
    "val.pt missing": (lambda p: (p / "val.pt").unlink(), "val.pt", "not found; run `hpcsweep prepare`"),
    "val.pt without a validation split": (
        lambda p: rewrite_stats(
            p, images={"train": TRAIN, "val": 0, "test": 60}, validation={"size": 0, "indices_sha256": "0" * 64}
        ),
        "val.pt",
        "present, but stats.json counts 0 validation images; run `hpcsweep prepare` again",
    ),
    "validation size disagrees": (
        lambda p: rewrite_stats(p, validation={"size": 7, "indices_sha256": "0" * 64}),
        "stats.json",
        f"...; expected the size {VAL_SIZE} and the indices' sha256",
    ),
    "prepared before the validation split": (
        lambda p: without_keys(p, "validation"),
        "stats.json",
        "prepared before the validation split existed (no images.val or validation); run `hpcsweep prepare` again",
    ),
    "stats.json missing": (lambda p: (p / "stats.json").unlink(), "stats.json", "not found; run `hpcsweep prepare`"),
}


def test_an_intact_prepared_folder_passes_and_gives_its_stats(prepared):
    stats = check_prepared(prepared)
    assert stats["images"] == {"train": TRAIN, "val": VAL_SIZE, "test": 60} and len(stats["mean"]) == 3


@pytest.mark.parametrize("case", DAMAGE)
def test_every_damaged_prepared_file_is_one_line_naming_it(prepared, case):
    damage, name, words = DAMAGE[case]
    damage(prepared)
    with pytest.raises(UserError) as error:
        check_prepared(prepared)
    message = str(error.value)
    assert message.startswith(f"{prepared / name}: ") and words in message, message
    assert "\n" not in message and len(message) < 400


@pytest.mark.slow
def test_train_on_a_corrupt_train_pt_exits_with_one_line_and_opens_no_run(prepared, tracking_server):
    """Needs training/train.py to call check_prepared before its TrackedRun opens."""
    project = prepared.parent.parent
    truncate(prepared / "train.pt")
    done = hpcsweep(["train", *overrides(*QUICK, "tracking.experiment=corrupt-prepared")], project, tracking_server)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"Error: {prepared / 'train.pt'}: not a readable prepared split")
    assert done.stderr.count("\n") == 1
    assert runs_of(tracking_server, "corrupt-prepared") == []

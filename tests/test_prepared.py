"""The prepared folder read back: a damaged train.pt, test.pt or stats.json is one line naming the
file, and `hpcsweep train` says so before any MLflow run exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.runs import QUICK, hpcsweep, overrides, runs_of
from hpcsweep.data.prepared import check_prepared
from hpcsweep.errors import UserError


def rewrite_stats(prepared: Path, **changes) -> None:
    stats = json.loads((prepared / "stats.json").read_text())
    (prepared / "stats.json").write_text(json.dumps({**stats, **changes}))


def resave_train(prepared: Path, **changes) -> None:
    tensors = torch.load(prepared / "train.pt", weights_only=True)
    torch.save({**tensors, **changes}, prepared / "train.pt")


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
        lambda p: resave_train(p, images=torch.zeros(300, 3, 32, 32)),
        "train.pt",
        "images are float32 (300, 3, 32, 32); expected uint8 N x 3 x 32 x 32",
    ),
    "float labels": (
        lambda p: resave_train(p, labels=torch.zeros(300)),
        "train.pt",
        "labels are float32 (300,); expected int64 (300,), one per image",
    ),
    "label out of range": (
        lambda p: resave_train(p, labels=torch.full((300,), 10)),
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
        lambda p: rewrite_stats(p, images={"train": "300", "test": 60}),
        "stats.json",
        "images={'train': '300', 'test': 60}; expected the image count",
    ),
    "counts disagree": (
        lambda p: rewrite_stats(p, images={"train": 50000, "test": 60}),
        "train.pt",
        "300 images, but stats.json counts 50000",
    ),
    "stats.json missing": (lambda p: (p / "stats.json").unlink(), "stats.json", "not found; run `hpcsweep prepare`"),
}


def test_an_intact_prepared_folder_passes_and_gives_its_stats(prepared):
    stats = check_prepared(prepared)
    assert stats["images"] == {"train": 300, "test": 60} and len(stats["mean"]) == 3


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

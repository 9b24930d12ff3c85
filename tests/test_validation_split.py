"""The held-out validation split (issue 15): what `hpcsweep prepare` holds out of the training
split, and what a training measures on it (`val/*`, every choice) and on the test split (`test/*`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.lightning_fit import module_for
from helpers.runs import QUICK, history, hpcsweep, overrides, runs_of
from helpers.synthetic import VAL_SIZE
from hpcsweep.data.cifar10 import import_archive, read_archive
from hpcsweep.data.loader import CIFAR10DataModule, load_stats
from hpcsweep.data.prepare import prepare
from hpcsweep.data.prepared import check_prepared, read_split
from hpcsweep.errors import UserError
from hpcsweep.training.module import ResNetModule


def official_index(images: torch.Tensor, official: np.ndarray) -> list[int]:
    """Where each image sits in the official training split, found by its pixels (the synthetic
    images are noisy: no two are alike); -1 for an image that is not there."""
    positions = {image.tobytes(): index for index, image in enumerate(official)}
    return [positions.get(image.numpy().tobytes(), -1) for image in images]


def test_the_split_is_class_balanced_disjoint_recorded_and_the_same_whatever_the_seed(prepared, synthetic_archive):
    official = read_archive(synthetic_archive)
    val_images, val_labels = read_split(prepared, "val")
    train_images, _ = read_split(prepared, "train")
    val_indices = official_index(val_images, official["train"].images)
    train_indices = official_index(train_images, official["train"].images)
    assert np.bincount(val_labels.numpy(), minlength=10).tolist() == [VAL_SIZE // 10] * 10
    assert -1 not in val_indices and -1 not in train_indices
    assert sorted(val_indices + train_indices) == list(range(300))  # disjoint, and nothing lost
    assert set(official_index(val_images, official["test"].images)) == {-1}  # no test image among them
    stats = json.loads((prepared / "stats.json").read_text())
    digest = hashlib.sha256(np.array(sorted(val_indices), dtype="<i8").tobytes()).hexdigest()
    assert stats["validation"] == {"size": VAL_SIZE, "indices_sha256": digest}

    # `hpcsweep prepare` again, elsewhere, under another training seed: the same images held out
    project = prepared.parent.parent
    again = project / "again"
    done = hpcsweep(["prepare", *overrides("seed=7", f"data.prepared_dir={again}")], project, "sqlite:///unused.db")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((again / "stats.json").read_text())["validation"] == stats["validation"]
    assert torch.equal(read_split(again, "val")[0], val_images)


def test_val_size_zero_holds_nothing_out_and_writes_no_val_pt(synthetic_archive, tmp_path):
    raw = import_archive(synthetic_archive, tmp_path / "raw").parent
    stats = prepare(raw, tmp_path / "prepared", 0)
    assert stats["images"] == {"train": 300, "val": 0, "test": 60} and stats["validation"]["size"] == 0
    assert not (tmp_path / "prepared/val.pt").exists()
    assert check_prepared(tmp_path / "prepared") == stats


def test_a_val_size_too_large_for_a_class_names_the_largest_valid_one_and_writes_nothing(synthetic_archive, tmp_path):
    raw = import_archive(synthetic_archive, tmp_path / "raw").parent
    # the synthetic archive's smallest class, truck, has 25 training images: 24 may go, 25 may not
    with pytest.raises(UserError) as error:
        prepare(raw, tmp_path / "prepared", 250)
    assert str(error.value) == (
        "data.val_size=250 holds out 25 images of class 'truck', which has 25 training images and needs one "
        "left for training; the largest valid data.val_size is 249"
    )
    assert not (tmp_path / "prepared").exists()
    assert prepare(raw, tmp_path / "prepared", 249)["images"]["train"] == 51  # the largest valid one is valid


def validated(prepared: Path, loader: str) -> tuple[ResNetModule, dict[str, float]]:
    """An untrained module's validation epoch on `prepared` through `loader`: the module, its metrics."""
    module = module_for(prepared.parent.parent, "micro_batch_size=60", "batch_size=60").eval()
    datamodule = CIFAR10DataModule(str(prepared), loader=loader, batch_size=60, seed=0, workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return module, {name: float(value) for name, value in trainer.callback_metrics.items()}


def measured(module: ResNetModule, prepared: Path, split: str) -> dict[str, float]:
    """The accuracy and loss of `module` on one prepared split, computed here in one batch."""
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in load_stats(prepared))
    images, labels = read_split(prepared, split)
    with torch.no_grad():
        logits = module((images.float() / 255 - mean) / std)
    return {"acc": float((logits.argmax(1) == labels).float().mean()), "loss": float(F.cross_entropy(logits, labels))}


@pytest.mark.parametrize("loader", ["device", "torchvision"])
def test_each_loader_measures_val_on_the_validation_split_and_test_on_the_test_split(prepared, loader):
    module, metrics = validated(prepared, loader)
    assert set(metrics) == {"val/acc", "val/loss", "test/acc", "test/loss"}
    for split in ("val", "test"):
        expected = measured(module, prepared, split)
        assert metrics[f"{split}/acc"] == pytest.approx(expected["acc"]), split
        assert metrics[f"{split}/loss"] == pytest.approx(expected["loss"], rel=1e-4), split


def test_without_a_validation_split_val_is_measured_on_the_test_split_as_before(prepared):
    prepare(prepared.parent / "raw", prepared, 0)
    module, metrics = validated(prepared, "device")
    expected = measured(module, prepared, "test")
    assert set(metrics) == {"val/acc", "val/loss"}
    assert (metrics["val/acc"], metrics["val/loss"]) == pytest.approx((expected["acc"], expected["loss"]), rel=1e-4)


@pytest.mark.slow
def test_a_training_logs_val_and_test_every_epoch_and_keeps_the_checkpoint_best_on_val(prepared, tracking_server):
    experiment = f"valsplit-{os.getpid()}"
    args = ["train", *overrides(*QUICK, "max_epochs=2", f"tracking.experiment={experiment}")]
    done = hpcsweep(args, prepared.parent.parent, tracking_server)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert run.data.params["val_size"] == str(VAL_SIZE)
    for metric in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert [step for step, _ in history(tracking_server, run.info.run_id, metric)] == [0, 1], metric
    val_history = [value for _, value in history(tracking_server, run.info.run_id, "val/acc")]
    assert run.data.metrics["best_val_acc"] == pytest.approx(max(val_history))
    [best] = prepared.parent.parent.glob("checkpoints/*/best.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    [monitored] = [state for key, state in checkpoint["callbacks"].items() if "'monitor': 'val/acc'" in key]
    assert float(monitored["best_model_score"]) == pytest.approx(max(val_history))
    assert checkpoint["epoch"] == val_history.index(max(val_history))  # the first epoch with the best val/acc
    stats = json.loads((prepared / "stats.json").read_text())
    [dataset] = run.inputs.dataset_inputs
    assert json.loads(dataset.dataset.profile)["validation"] == stats["validation"]


@pytest.mark.slow
def test_a_val_size_the_data_was_not_prepared_with_is_refused_and_zero_trains_as_before(prepared, tracking_server):
    project = prepared.parent.parent
    experiment = f"valzero-{os.getpid()}"
    args = ["train", *overrides(*QUICK, "data.val_size=0", f"tracking.experiment={experiment}")]
    refused = hpcsweep(args, project, tracking_server)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"Error: data.val_size=0 but {prepared} was prepared with {VAL_SIZE}; run `hpcsweep prepare` again "
        f"(dvc repro prepare)\n"
    )
    assert runs_of(tracking_server, experiment) == []

    prepare(project / "data/raw", prepared, 0)
    done = hpcsweep(args, project, tracking_server)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert run.data.params["val_size"] == "0" and "val/acc" in run.data.metrics
    assert not [metric for metric in run.data.metrics if metric.startswith("test/")]

"""The real CIFAR-10 (public JPEG copy in ../shared/data): imported, prepared, and learned from."""

from __future__ import annotations

import json

import pytest

from hpcsweep.config import load_config
from hpcsweep.training.train import train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

PUBLISHED_MEAN = (0.4914, 0.4822, 0.4465)
PUBLISHED_STD = (0.2470, 0.2435, 0.2616)


def test_the_real_archive_imports_and_prepares_to_the_published_statistics(real_project):
    stats = json.loads((real_project / "data/prepared/stats.json").read_text())
    assert stats["images"] == {"train": 45_000, "val": 5_000, "test": 10_000}  # data.val_size: 5000
    assert stats["mean"] == pytest.approx(PUBLISHED_MEAN, abs=0.01)
    assert stats["std"] == pytest.approx(PUBLISHED_STD, abs=0.01)


def test_a_short_run_on_real_images_learns_well_above_chance(real_project, monkeypatch):
    monkeypatch.chdir(real_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(
        "params.yaml",
        [
            "limit_train_samples=8192",
            "max_epochs=2",
            "warmup_epochs=0.5",
            "batch_size=64",
            "base_batch_size=64",
            "lr=0.1",
            "accelerator=cpu",
            "tracking.experiment=realdata",
            "tracking.log_model=false",  # 10-20 s of torch.export this test does not look at
        ],
    )
    result = train(config)
    print(f"resnet20, 8192 real images, 2 epochs: val/acc {result.val_acc:.3f} in {result.total_time_s:.0f} s")
    assert result.status == "FINISHED"
    assert result.val_acc > 0.3  # chance is 0.1

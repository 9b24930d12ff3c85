"""What must hold before a training opens a run, checked before Lightning and MLflow are imported.

A training on a project never prepared, on a damaged prepared file, with a batch larger than its
images or on a GPU this torch build cannot run is refused in one line before any run or
checkpoint exists. Checked here, apart from train.py, `hpcsweep train` says so in the seconds
importing torch takes rather than after the ~10 s of importing Lightning and MLflow; train() runs
the same checks for whoever calls it directly (the prepared files are memory-mapped: cheap twice).
"""

from __future__ import annotations

from pathlib import Path

from hpcsweep.config import Config
from hpcsweep.data.prepared import check_prepared
from hpcsweep.data.stats import check_val_size
from hpcsweep.errors import UserError
from hpcsweep.hardware.gpus import check_training_hardware


def check_can_train(config: Config) -> None:
    """Raise UserError where `config` cannot train here."""
    stats = check_prepared(Path(config.data.prepared_dir))
    check_val_size(config.data.val_size, stats, Path(config.data.prepared_dir))
    check_enough_data(config, stats)
    check_training_hardware(config.train)  # a GPU this torch build cannot run fails here, not minutes in


def check_enough_data(config: Config, stats: dict) -> None:
    available = min(stats["images"]["train"], config.train.limit_train_samples or stats["images"]["train"])
    if available < config.train.batch_size:
        raise UserError(
            f"train.batch_size={config.train.batch_size} is larger than the {available} training "
            f"images (limit_train_samples={config.train.limit_train_samples}): no step could be taken"
        )

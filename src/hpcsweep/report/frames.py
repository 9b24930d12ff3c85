"""The data behind the report's plots: DDP scaling, learning curves and the Pareto points.

Kept apart from the drawing (`plots`) so that each frame can be checked on hand-made runs, and from
the table so that each plot reads the same compared rows the sentences do: every set-up at its
chosen (best tuned) value, finished runs only.
"""

from __future__ import annotations

import pandas as pd

from hpcsweep.report.records import ACCURACY, IDENTITY, Configuration
from hpcsweep.report.statistics import mean_or_nan
from hpcsweep.report.table import finished_rows

PARALLEL_KEYS = ("devices", "num_nodes", "strategy")  # what changes between a 1-GPU run and its DDP twin


def tuned_keys(table: pd.DataFrame) -> set[str]:
    """Every key some row tuned: a chosen value may differ between otherwise equal set-ups."""
    return {name for names in table["tuned_keys"] for name in names.split(",") if name}


def scaling_frame(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """DDP speed-up (images/s over the 1-GPU images/s of the same other params) and efficiency
    (speed-up / GPUs), for each group of otherwise equal configurations that has a 1-GPU run."""
    done = finished_rows(table).assign(gpus=lambda t: t["devices"].astype(int) * t["num_nodes"].astype(int))
    ignored = set(PARALLEL_KEYS) | tuned_keys(done)
    others = [name for name in IDENTITY if name not in ignored]
    label_keys = [name for name in varying if name not in ignored]
    rows = []
    for key, group in done.groupby(others, sort=False):
        single = group[group["gpus"] == 1]
        if single.empty or group["gpus"].nunique() < 2:
            continue
        label = ", ".join(f"{name}={key[others.index(name)]}" for name in label_keys) or "all"
        baseline = single["train/images_per_s"].iloc[0]
        for gpus, speed in zip(group["gpus"], group["train/images_per_s"]):
            rows.append(
                {"group": label, "gpus": gpus, "speedup": speed / baseline, "efficiency": speed / baseline / gpus}
            )
    return pd.DataFrame(rows, columns=["group", "gpus", "speedup", "efficiency"]).sort_values(["group", "gpus"])


def curves_frame(found: list[Configuration]) -> pd.DataFrame:
    """Per configuration and epoch, the seeds' mean wall-clock time, val/acc and train/loss."""
    rows = []
    for configuration in found:
        runs = configuration.finished
        if not runs:
            continue
        epochs = min(len(run.history.get(ACCURACY, [])) for run in runs)
        for epoch in range(epochs):
            rows.append(
                {
                    "configuration": configuration.label,
                    "epoch": epoch,
                    "wall_time_s": mean_or_nan(
                        run.wall_times[epoch] if epoch < len(run.wall_times) else None for run in runs
                    ),
                    "val_acc": mean_or_nan(run.history[ACCURACY][epoch] for run in runs),
                    "train_loss": mean_or_nan(
                        run.history["train/loss"][epoch] if epoch < len(run.history.get("train/loss", [])) else None
                        for run in runs
                    ),
                }
            )
    return pd.DataFrame(rows, columns=["configuration", "epoch", "wall_time_s", "val_acc", "train_loss"])


def pareto_points(table: pd.DataFrame, front: pd.Series) -> pd.DataFrame:
    """The compared rows as `pareto.csv` holds them (column names kept for `dvc plots`)."""
    done = finished_rows(table)
    return pd.DataFrame(
        {
            "gpu_hours": done["gpu_hours"],
            "val_acc": done[ACCURACY],
            "configuration": done["configuration"],
            "on_front": front[done.index],
        }
    )

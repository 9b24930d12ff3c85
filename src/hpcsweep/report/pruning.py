"""Early stopping's account: the points it pruned and the device-hours that saved.

A grid may stop hopeless points early (`prune:`): such a run ends KILLED with tag
`hpcsweep.pruned_at_epoch`. It never counts as finished and cannot win; what it is worth is the
epochs it did not run, priced at its own mean epoch time on the devices it held.
"""

from __future__ import annotations

import math

from hpcsweep.report.records import RunRecord
from hpcsweep.report.statistics import mean_or_nan


def pruned_runs(records: list[RunRecord]) -> list[RunRecord]:
    return [record for record in records if record.pruned_at_epoch is not None]


def hours_saved(run: RunRecord) -> float:
    """(max_epochs - pruned_at_epoch) x mean epoch_time_s x devices / 3600; 0 without epoch times."""
    epochs_left = int(float(run.params.get("max_epochs", run.pruned_at_epoch))) - run.pruned_at_epoch
    epoch_seconds = mean_or_nan(run.history.get("epoch_time_s", []))
    return 0.0 if math.isnan(epoch_seconds) else max(epochs_left, 0) * epoch_seconds * run.gpus / 3600


def device_hours_saved(records: list[RunRecord]) -> float:
    return sum(hours_saved(run) for run in pruned_runs(records))


def pruning_sentence(records: list[RunRecord], device: str) -> str | None:
    """ "Early stopping pruned K points at epochs ..., saving about X device-hours"; None if none was."""
    pruned = pruned_runs(records)
    if not pruned:
        return None
    epochs = sorted({run.pruned_at_epoch for run in pruned})
    at = f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}"
    points = f"{len(pruned)} point{'s' if len(pruned) > 1 else ''}"
    return (
        f"Early stopping pruned {points} at {at}, saving about {device_hours_saved(records):.3g} {device} "
        f"(the epochs not run, at each point's own mean epoch time); pruned points are never averaged in."
    )

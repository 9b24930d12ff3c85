"""The report's flat numbers, as `summary.json` holds them for `dvc metrics show` and `dvc exp show`.

Keys are stable names that pipelines and tests read (`best_configuration`, `best_val_acc`,
`best_gpu_hours`, `best_time_to_target_s`, ...): "gpu" in a key means device-hours whatever the
device, and `device_hours_name` says which they are. Figures that do not exist (nothing finished,
a target never reached) are left out rather than written as NaN.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from hpcsweep.report.findings import runs_validated_on_test, tied_mask
from hpcsweep.report.pruning import device_hours_saved, pruned_runs
from hpcsweep.report.records import ACCURACY, FINISHED, KILLED, TEST_ACCURACY, RunRecord
from hpcsweep.report.table import finished_rows, most_accurate


def best_numbers(done: pd.DataFrame) -> dict[str, object]:
    """The most accurate compared configuration, and the fastest to the target."""
    best = most_accurate(done)
    numbers = {
        "best_configuration": best["configuration"],
        "best_val_acc": best[ACCURACY],
        "best_val_acc_ci95": best[f"{ACCURACY}_ci95"],
        "best_test_acc": best[TEST_ACCURACY],
        "best_gpu_hours": best["gpu_hours"],
        "best_total_time_s": best["total_time_s"],
        "best_time_to_target_s": best["time_to_target_s"],
        "tied_with_best": int(tied_mask(done).sum()),
    }
    fastest = done.iloc[0]  # the table is ranked by time to the target
    if fastest["n_reached_target"] > 0:
        numbers.update(
            fastest_configuration=fastest["configuration"],
            fastest_time_to_target_s=fastest["time_to_target_s"],
            fastest_gpu_hours_to_target=fastest["gpu_hours_to_target"],
        )
    return numbers


def summary_numbers(
    records: list[RunRecord], table: pd.DataFrame, front: pd.Series, device: str
) -> dict[str, float | int | str]:
    """Flat figures: counts, the study's cost, the savings of early stopping, the best and fastest."""
    pruned = len(pruned_runs(records))
    statuses = Counter(record.status for record in records)
    done = finished_rows(table)
    numbers = {
        "configurations": len(table),
        "finished_configurations": len(done),
        "runs": len(records),
        "finished_runs": statuses[FINISHED],
        "failed_runs": statuses["FAILED"],
        "killed_runs": statuses[KILLED] - pruned,
        "pruned_runs": pruned,
        "unfinished_runs": statuses["SCHEDULED"] + statuses["RUNNING"],
        "pareto_configurations": int(front.sum()),
        "device_hours_name": device,
        "study_gpu_hours": sum(r.gpus * r.metrics.get("total_time_s", 0.0) for r in records) / 3600,
        "device_hours_saved": device_hours_saved(records),
        "choices_on_test_split": int(bool(runs_validated_on_test(records))),
        **(best_numbers(done) if not done.empty else {}),
    }
    return {
        key: value if isinstance(value, str) else float(value) if isinstance(value, float) else int(value)
        for key, value in numbers.items()
        if not (isinstance(value, float) and math.isnan(value))
    }

"""Time to result: how long, and how many device-hours, each configuration took to reach the target.

The study's question is accuracy per device-hour, and a training algorithm is judged by the time
it takes to reach a validation target on fixed hardware (as MLCommons AlgoPerf scores it). This
module times each run to the target from its val/acc history (the held-out split), ranks the
configurations by it, names device-hours for the device the runs used, and writes the sentence
that leads the findings: the same figures, in the same order, as the table.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from hpcsweep.report.records import ACCURACY, FINISHED, Configuration, RunRecord

LISTED = 5  # configurations named in the sentence; the table has them all


def device_hours_name(records: list[RunRecord]) -> str:
    """ "GPU-hours" or "CPU-hours" when every run that trained says which it used, else "device-hours"."""
    trained = [record for record in records if record.status == FINISHED or record.pruned_at_epoch is not None]
    kinds = {record.device_type for record in trained or records}
    return f"{next(iter(kinds))}-hours" if len(kinds) == 1 and None not in kinds else "device-hours"


def time_to_target(run: RunRecord, target: float | None) -> float | None:
    """The run's own time_to_target_s, or, for a target chosen at report time, one from its history."""
    return run.metrics.get("time_to_target_s") if target is None else run.time_to(target)


def typical_accuracy(found: list[Configuration]) -> float:
    """An accuracy about half the finished runs reached (their median best val/acc, whole percent
    down): when nothing reached the target, "time to X" still separates the configurations."""
    best = [max(run.history[ACCURACY]) for c in found for run in c.finished if run.history.get(ACCURACY)]
    return math.floor(statistics.median(best) * 100) / 100 if best else math.nan


def times_to(found: list[Configuration], threshold: float) -> pd.DataFrame:
    """Per configuration whose seeds reached `threshold`, the table's timing columns for it."""
    rows = []
    for configuration in found:
        reached = [(run.time_to(threshold), run.gpus) for run in configuration.finished]
        reached = [(seconds, gpus) for seconds, gpus in reached if seconds is not None]
        if reached:
            rows.append(
                {
                    "configuration": configuration.label,
                    "time_to_target_s": statistics.fmean(seconds for seconds, _ in reached),
                    "gpu_hours_to_target": statistics.fmean(seconds * gpus / 3600 for seconds, gpus in reached),
                    "n_reached_target": len(reached),
                    "n_seeds": len(configuration.finished),
                    ACCURACY: math.nan,  # ranked by time alone
                }
            )
    columns = ["configuration", "time_to_target_s", "gpu_hours_to_target", "n_reached_target", "n_seeds", ACCURACY]
    return pd.DataFrame(rows, columns=columns)


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Rows fastest to the target first: those every seed of which reached it, then those only some
    seeds of which did, then the rest by val/acc; rows that stand for no set-up (a tuned value not
    chosen) and rows with nothing finished last."""
    reach = np.where(
        (table["n_reached_target"] == table["n_seeds"]) & (table["n_seeds"] > 0),
        0,
        np.where(table["n_reached_target"] > 0, 1, 2),
    )
    keys = {
        "rank_hidden": ~table["chosen"].astype(bool),
        "rank_unfinished": table["n_seeds"] == 0,
        "rank_reach": reach,
        "rank_time": table["time_to_target_s"].where(reach < 2, math.inf),
        "rank_accuracy": -table[ACCURACY],
    }
    order = table.assign(**keys).sort_values([*keys, "configuration"], na_position="last")
    return order.drop(columns=list(keys)).reset_index(drop=True)


def timed(row: pd.Series, device: str) -> str:
    return (
        f"{row['configuration']}: {row['time_to_target_s']:.1f} s, {row['gpu_hours_to_target']:.3g} {device} "
        f"({row['n_reached_target']}/{row['n_seeds']} seeds)"
    )


def ranking_text(reached: pd.DataFrame, missed: list[str], device: str) -> str:
    listed = "; ".join(timed(row, device) for _, row in reached.head(LISTED).iterrows())
    more = f"; {len(reached) - LISTED} more in the table" if len(reached) > LISTED else ""
    never = f"; never reached by {', '.join(missed)}" if missed else ""
    return f"{listed}{more}{never}"


def time_sentence(found: list[Configuration], done: pd.DataFrame, target: float, device: str) -> str:
    """Time and device-hours to the target, fastest first (`done`: the compared rows, ranked); when
    nothing reached it, the same to the median best val/acc, from the histories."""
    reached = done[done["n_reached_target"] > 0]
    goal = "no target set" if math.isnan(target) else f"{target:.0%} val/acc"
    if not reached.empty:
        missed = done.loc[done["n_reached_target"] == 0, "configuration"].tolist()
        return f"Time to {goal} (the target), fastest first: {ranking_text(reached, missed, device)}."
    threshold = typical_accuracy(found)
    if math.isnan(threshold):
        return "No configuration has a val/acc history to time."
    timings = ranked(times_to(found, threshold).assign(chosen=True))
    if timings.empty:
        return f"No configuration reached {threshold:.0%} val/acc."
    missed = sorted(set(done["configuration"]) - set(timings["configuration"]))
    return (
        f"Nothing reached the target ({goal}). Time to {threshold:.0%} val/acc (the median best val/acc), "
        f"fastest first: {ranking_text(timings, missed, device)}."
    )

"""Which set-ups train best per GPU-hour: the report's numbers and sentences, computed from records.

A study is only useful once its runs are compared: seeds averaged, failures shown rather than
averaged in, accuracy weighed against what it cost. This module turns records into one row per
configuration (the config keys except `seed`), the Pareto front of accuracy against GPU-hours,
sentences that name the winners and a recommendation, the frames behind the scaling and learning
curve plots, and the flat numbers `dvc metrics show` reads. It draws and writes nothing, so every
answer can be tested on hand-made runs.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pandas as pd

from hpcsweep.report.records import ACCURACY, FINISHED, IDENTITY, Configuration, RunRecord

PARALLEL_KEYS = ("devices", "num_nodes", "strategy")  # what changes between a 1-GPU run and its DDP twin
DEFAULT_LABEL_KEYS = ("model", "optimizer", "batch_size")  # when nothing varies, still say what ran
NEAR_BEST = 0.01  # a configuration within one accuracy point of the best counts as as good


def varying_keys(keys: list[tuple[str, ...]]) -> list[str]:
    return [name for i, name in enumerate(IDENTITY) if len({key[i] for key in keys}) > 1]


def configurations(records: list[RunRecord]) -> tuple[list[Configuration], list[str]]:
    """Runs grouped by everything but the seed, labelled by the keys that differ between groups."""
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        groups.setdefault(tuple(record.params.get(name, "") for name in IDENTITY), []).append(record)
    varying = varying_keys(list(groups))
    label_keys = varying or [name for name in DEFAULT_LABEL_KEYS if name in IDENTITY]
    found = [
        Configuration(key, ", ".join(f"{name}={key[IDENTITY.index(name)]}" for name in label_keys), runs)
        for key, runs in groups.items()
    ]
    return found, varying


def mean_or_nan(values) -> float:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.fmean(present) if present else math.nan


def std_or_nan(values) -> float:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.stdev(present) if len(present) > 1 else math.nan


def status_text(runs: list[RunRecord]) -> str:
    counts = Counter(run.status for run in runs)
    order = [FINISHED] + sorted(status for status in counts if status != FINISHED)
    return ", ".join(f"{counts[status]} {status}" for status in order if counts[status])


def time_to_target(run: RunRecord, target: float | None) -> float | None:
    """The run's own time_to_target_s, or, for a target chosen at report time, one from its history."""
    return run.metrics.get("time_to_target_s") if target is None else run.time_to(target)


def configuration_row(configuration: Configuration, target: float | None) -> dict[str, object]:
    done = configuration.finished
    final = [run.final(ACCURACY) for run in done]
    best = [max(run.history[ACCURACY]) if run.history.get(ACCURACY) else None for run in done]
    reached = [t for t in (time_to_target(run, target) for run in done) if t is not None]
    micro = [run.metrics["micro_batch_size"] for run in done if "micro_batch_size" in run.metrics]
    accumulate = [run.metrics["accumulate_grad_batches"] for run in done if "accumulate_grad_batches" in run.metrics]
    return {
        "configuration": configuration.label,
        **dict(zip(IDENTITY, configuration.key)),
        "status": status_text(configuration.runs),
        "runs": len(configuration.runs),
        "n_seeds": len(done),
        ACCURACY: mean_or_nan(final),
        f"{ACCURACY}_std": std_or_nan(final),
        "best_val_acc": mean_or_nan(best),
        "best_val_acc_std": std_or_nan(best),
        "time_to_target_s": mean_or_nan(reached),
        "n_reached_target": len(reached),
        "total_time_s": mean_or_nan(run.metrics.get("total_time_s") for run in done),
        "train/images_per_s": mean_or_nan(mean_or_nan(run.history.get("train/images_per_s", [])) for run in done),
        # over the whole run, as images/s; NaN where no run knew its GPU's peak (the CPU, an unlisted GPU)
        "train/mfu": mean_or_nan(mean_or_nan(run.history.get("train/mfu", [])) for run in done),
        "gpu_hours": mean_or_nan(run.gpus * run.metrics.get("total_time_s", math.nan) / 3600 for run in done),
        # seeds should agree; if an out-of-memory retry made one differ, show the plan a rerun must expect
        "micro_batch_size_used": min(micro) if micro else math.nan,
        "accumulate_grad_batches": max(accumulate) if accumulate else math.nan,
        "oom_retries": max((run.metrics.get("oom_retries", 0) for run in done), default=math.nan),
        "peak_memory_mb": mean_or_nan(run.metrics.get("peak_memory_mb") for run in done),
    }


def configuration_table(found: list[Configuration], target: float | None = None) -> pd.DataFrame:
    """One row per configuration, most accurate first; unfinished configurations last."""
    table = pd.DataFrame([configuration_row(configuration, target) for configuration in found])
    if target is not None:
        table["target_accuracy"] = str(target)
    return table.sort_values(
        [ACCURACY, "configuration"], ascending=[False, True], na_position="last", ignore_index=True
    )


def finished_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["n_seeds"] > 0) & table[ACCURACY].notna() & table["gpu_hours"].notna()]


def pareto_front(table: pd.DataFrame, cost: str = "gpu_hours", value: str = ACCURACY) -> pd.Series:
    """True for each row that no other row dominates (as cheap or cheaper and as good or better,
    strictly in one of the two): the configurations worth choosing between."""
    points = list(zip(table[cost], table[value]))

    def dominated(c: float, v: float) -> bool:
        return any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2 in points)

    return pd.Series([not dominated(c, v) for c, v in points], index=table.index, dtype=bool)


def ceiling_2_significant(value: float) -> float:
    """A round threshold at or above `value` (0.00157 -> 0.0016), so the median itself is under it."""
    if value <= 0:
        return value
    unit = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(round(value / unit, 9)) * unit


def describe(row: pd.Series) -> str:
    spread = f" ± {row[f'{ACCURACY}_std']:.4f}" if not math.isnan(row[f"{ACCURACY}_std"]) else ""
    seeds = f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}"
    return (
        f"{row['configuration']} (val/acc {row[ACCURACY]:.4f}{spread} over {seeds}, {row['gpu_hours']:.3g} GPU-hours)"
    )


def typical_accuracy(found: list[Configuration]) -> float:
    """An accuracy about half the finished runs reached (their median best val/acc, whole percent
    down): when nothing reached the target, "fastest to X" still separates the configurations."""
    best = [max(run.history[ACCURACY]) for c in found for run in c.finished if run.history.get(ACCURACY)]
    return math.floor(statistics.median(best) * 100) / 100 if best else math.nan


def fastest(candidates: list[tuple[float, str, int, int]]) -> tuple[float, str, int, int] | None:
    """The soonest of (mean seconds, label, seeds that reached, seeds) where every seed got there;
    a configuration only some seeds of which reached it is a candidate only when none is reliable."""
    return min(candidates, key=lambda c: (c[2] < c[3], c[0]), default=None)


def times_to(found: list[Configuration], threshold: float) -> list[tuple[float, str, int, int]]:
    """Per configuration, wall-clock training seconds until val/acc reached `threshold` (history)."""
    timed = []
    for configuration in found:
        times = [t for t in (run.time_to(threshold) for run in configuration.finished) if t is not None]
        if times:
            timed.append((statistics.fmean(times), configuration.label, len(times), len(configuration.finished)))
    return timed


def fastest_sentence(found: list[Configuration], done: pd.DataFrame, target: float) -> str:
    reached = done[done["time_to_target_s"].notna()]
    if not reached.empty:  # the table's own figures, so that the sentence and the table agree
        threshold, note = target, " (the target)"
        winner = fastest(
            list(
                zip(
                    reached["time_to_target_s"],
                    reached["configuration"],
                    reached["n_reached_target"],
                    reached["n_seeds"],
                )
            )
        )
    else:
        threshold, note = typical_accuracy(found), " (the median best val/acc; nothing reached the target)"
        winner = fastest(times_to(found, threshold))
    if winner is None:
        return f"No configuration reached {threshold:.0%} val/acc."
    seconds, label, hits, seeds = winner
    return (
        f"Fastest to {threshold:.0%} val/acc{note}: {label}, after {seconds:.1f} s of training "
        f"(mean over the {hits}/{seeds} seeds that reached it)."
    )


def findings(found: list[Configuration], table: pd.DataFrame, target: float) -> list[str]:
    done = finished_rows(table)
    if done.empty:
        return ["No configuration finished: there is nothing to compare yet."]
    best = done.loc[done[ACCURACY].idxmax()]
    sentences = [f"Most accurate: {describe(best)}."]
    budget = ceiling_2_significant(statistics.median(done["gpu_hours"]))
    affordable = done[done["gpu_hours"] <= budget]
    cheap_best = affordable.loc[affordable[ACCURACY].idxmax()]
    same = " the most accurate itself" if cheap_best["configuration"] == best["configuration"] else ""
    sentences.append(f"Best under {budget:.2g} GPU-hours (the median cost):{same or ' ' + describe(cheap_best)}.")
    return [*sentences, fastest_sentence(found, done, target)]


def recommendation(table: pd.DataFrame) -> str:
    done = finished_rows(table)
    if done.empty:
        return "Recommendation: none — no configuration finished; fix the failures listed in the table first."
    best = done.loc[done[ACCURACY].idxmax()]
    margin = max(NEAR_BEST, 0 if math.isnan(best[f"{ACCURACY}_std"]) else best[f"{ACCURACY}_std"])
    good = done[done[ACCURACY] >= best[ACCURACY] - margin]
    choice = good.loc[good["gpu_hours"].idxmin()]
    if choice["configuration"] == best["configuration"]:
        advice = (
            f"Recommendation: {describe(best)}: the most accurate, and nothing within {margin:.3f} of it is cheaper."
        )
    else:
        share = choice["gpu_hours"] / best["gpu_hours"] if best["gpu_hours"] else math.nan
        advice = (
            f"Recommendation: {describe(choice)}: within {margin:.3f} val/acc of the most accurate "
            f"({best['configuration']}) for {share:.0%} of its GPU-hours."
        )
    if done["n_seeds"].min() < 2:
        advice += " Some configurations have a single seed: differences smaller than seed noise are not established."
    return advice


def problems(table: pd.DataFrame) -> list[str]:
    """Configurations with runs that did not finish: shown, never averaged in."""
    unfinished = table[table["n_seeds"] < table["runs"]]
    return [
        f"Not all runs finished for {row.configuration}: {row.status}; only FINISHED runs enter the figures."
        for row in unfinished.itertuples()
    ]


def scaling_frame(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """DDP speed-up (images/s over the 1-GPU images/s of the same other params) and efficiency
    (speed-up / GPUs), for each group of otherwise equal configurations that has a 1-GPU run."""
    done = finished_rows(table).assign(gpus=lambda t: t["devices"].astype(int) * t["num_nodes"].astype(int))
    others = [name for name in IDENTITY if name not in PARALLEL_KEYS]
    label_keys = [name for name in varying if name not in PARALLEL_KEYS]
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


def summary_numbers(records: list[RunRecord], table: pd.DataFrame, front: pd.Series) -> dict[str, float | str]:
    """Flat figures for `dvc metrics show` and `dvc exp show` (the best configuration by name, the rest
    numbers); figures that do not exist (nothing finished, target never reached) are left out."""
    statuses = Counter(record.status for record in records)
    done = finished_rows(table)
    numbers = {
        "configurations": len(table),
        "finished_configurations": len(done),
        "runs": len(records),
        "finished_runs": statuses[FINISHED],
        "failed_runs": statuses["FAILED"],
        "killed_runs": statuses["KILLED"],
        "unfinished_runs": statuses["SCHEDULED"] + statuses["RUNNING"],
        "pareto_configurations": int(front.sum()),
        "study_gpu_hours": sum(r.gpus * r.metrics.get("total_time_s", 0.0) for r in records) / 3600,
    }
    if not done.empty:
        best = done.loc[done[ACCURACY].idxmax()]
        numbers.update(
            best_configuration=best["configuration"],
            best_val_acc=best[ACCURACY],
            best_gpu_hours=best["gpu_hours"],
            best_total_time_s=best["total_time_s"],
            best_time_to_target_s=best["time_to_target_s"],
        )
    return {
        key: value if isinstance(value, str) else float(value) if isinstance(value, float) else int(value)
        for key, value in numbers.items()
        if not (isinstance(value, float) and math.isnan(value))
    }


def runs_target(table: pd.DataFrame) -> float:
    """The target_accuracy the runs were trained with (a grid normally shares one)."""
    for value in table["target_accuracy"]:
        try:
            return float(value)
        except ValueError:
            continue
    return math.nan

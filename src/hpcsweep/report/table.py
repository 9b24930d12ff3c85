"""The configuration table: one row per configuration, seeds aggregated and compared with the best.

A study is only useful once its runs are compared: seeds averaged with a confidence interval,
failures and pruned runs shown rather than averaged in, accuracy weighed against what it cost and
how long it took to reach the target. Each row is one configuration (the config keys except
`seed`); columns say which tuned set-up it belongs to and whether it is the one that stands for it
(`chosen`), and the chosen rows are compared with the most accurate of them (Welch's p-value, the
"tied" verdict, the seeds that would separate them). Rows are ranked by time to the target.
Choices read val/acc only; test/acc is reported beside it.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from hpcsweep.report.records import ACCURACY, FINISHED, IDENTITY, TEST_ACCURACY, Configuration, RunRecord
from hpcsweep.report.statistics import ci_half_width, mean_or_nan, seeds_to_separate, std_or_nan, tied, welch_p
from hpcsweep.report.timing import ranked, time_to_target
from hpcsweep.report.tuning import TunedGroup, label_keys, label_of, tuned_groups


def varying_keys(keys: list[tuple[str, ...]]) -> list[str]:
    return [name for i, name in enumerate(IDENTITY) if len({key[i] for key in keys}) > 1]


def configurations(records: list[RunRecord]) -> tuple[list[Configuration], list[str]]:
    """Runs grouped by everything but the seed, labelled by the keys that differ between groups."""
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        groups.setdefault(tuple(record.params.get(name, "") for name in IDENTITY), []).append(record)
    varying = varying_keys(list(groups))
    names = label_keys(varying)
    return [Configuration(key, label_of(key, names), runs) for key, runs in groups.items()], varying


def run_status(run: RunRecord) -> str:
    return (
        FINISHED
        if run.status == FINISHED
        else f"pruned at epoch {run.pruned_at_epoch}"
        if run.pruned_at_epoch
        else run.status
    )


def status_text(runs: list[RunRecord]) -> str:
    counts = Counter(run_status(run) for run in runs)
    order = [FINISHED] + sorted(status for status in counts if status != FINISHED)
    return ", ".join(f"{counts[status]} {status}" for status in order if counts[status])


def configuration_row(configuration: Configuration, target: float | None, group: TunedGroup) -> dict[str, object]:
    done = configuration.finished
    final = [run.final(ACCURACY) for run in done]
    tested = [run.final(TEST_ACCURACY) for run in done]
    best = [max(run.history[ACCURACY]) if run.history.get(ACCURACY) else None for run in done]
    reached = [(t, run.gpus) for t, run in ((time_to_target(run, target), run) for run in done) if t is not None]
    micro = [run.metrics["micro_batch_size"] for run in done if "micro_batch_size" in run.metrics]
    accumulate = [run.metrics["accumulate_grad_batches"] for run in done if "accumulate_grad_batches" in run.metrics]
    return {
        "configuration": configuration.label,
        "group": group.label,
        "tuned_keys": ",".join(group.tuned),
        "tuned": group.range_text,
        "chosen": group.shown(configuration),
        **dict(zip(IDENTITY, configuration.key)),
        "status": status_text(configuration.runs),
        "runs": len(configuration.runs),
        "n_seeds": len(done),
        "n_pruned": len(configuration.pruned),
        ACCURACY: mean_or_nan(final),
        f"{ACCURACY}_std": std_or_nan(final),
        f"{ACCURACY}_ci95": ci_half_width(final),
        "best_val_acc": mean_or_nan(best),
        "best_val_acc_std": std_or_nan(best),
        TEST_ACCURACY: mean_or_nan(tested),  # reported, never chosen by
        f"{TEST_ACCURACY}_ci95": ci_half_width(tested),
        "time_to_target_s": mean_or_nan(seconds for seconds, _ in reached),
        "gpu_hours_to_target": mean_or_nan(seconds * gpus / 3600 for seconds, gpus in reached),
        "n_reached_target": len(reached),
        "total_time_s": mean_or_nan(run.metrics.get("total_time_s") for run in done),
        "train/images_per_s": mean_or_nan(mean_or_nan(run.history.get("train/images_per_s", [])) for run in done),
        # over the whole run, as images/s; NaN where no run knew its GPU's peak (the CPU, an unlisted GPU)
        "train/mfu": mean_or_nan(mean_or_nan(run.history.get("train/mfu", [])) for run in done),
        # device-hours (devices x nodes x time), whatever the device: the pages name it for the device
        "gpu_hours": mean_or_nan(run.gpus * run.metrics.get("total_time_s", math.nan) / 3600 for run in done),
        # seeds should agree; if an out-of-memory retry made one differ, show the plan a rerun must expect
        "micro_batch_size_used": min(micro) if micro else math.nan,
        "accumulate_grad_batches": max(accumulate) if accumulate else math.nan,
        "oom_retries": max((run.metrics.get("oom_retries", 0) for run in done), default=math.nan),
        "peak_memory_mb": mean_or_nan(run.metrics.get("peak_memory_mb") for run in done),
    }


def finished_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that are compared: each set-up's chosen configuration, where it finished."""
    return table[table["chosen"] & (table["n_seeds"] > 0) & table[ACCURACY].notna() & table["gpu_hours"].notna()]


def most_accurate(done: pd.DataFrame) -> pd.Series:
    """The compared row with the highest mean val/acc (ties: by label): the one others are tested against."""
    return done.sort_values([ACCURACY, "configuration"], ascending=[False, True]).iloc[0]


def compared_with_best(table: pd.DataFrame, found: list[Configuration]) -> pd.DataFrame:
    """Welch's p-value, the tied verdict (None: one seed, cannot say) and the seeds that would separate
    each compared row from the most accurate one; blank for the best itself and for other rows."""
    finals = {c.label: [run.final(ACCURACY) for run in c.finished] for c in found}
    done = finished_rows(table)
    columns = {"p_vs_best": math.nan, "tied_with_best": None, "seeds_to_separate": math.nan}
    table = table.assign(**columns).astype({"tied_with_best": object})
    if done.empty:
        return table
    best_label = most_accurate(done)["configuration"]
    best = finals[best_label]
    for index, label in done["configuration"].items():
        if label == best_label:
            continue
        needed = seeds_to_separate(best, finals[label])
        table.at[index, "p_vs_best"] = welch_p(best, finals[label])
        table.at[index, "tied_with_best"] = tied(best, finals[label])
        table.at[index, "seeds_to_separate"] = math.nan if needed is None else needed
    return table


def configuration_table(
    found: list[Configuration], target: float | None = None, groups: list[TunedGroup] | None = None
) -> pd.DataFrame:
    """One row per configuration, fastest to the target first; unfinished configurations last."""
    if groups is None:
        groups = tuned_groups(found, varying_keys([c.key for c in found]))
    group_of = {id(member): group for group in groups for member in group.members}
    table = pd.DataFrame([configuration_row(c, target, group_of[id(c)]) for c in found])
    if target is not None:
        table["target_accuracy"] = str(target)
    return ranked(compared_with_best(table, found))


def pareto_front(table: pd.DataFrame, cost: str = "gpu_hours", value: str = ACCURACY) -> pd.Series:
    """True for each row that no other row dominates (as cheap or cheaper and as good or better,
    strictly in one of the two): the configurations worth choosing between."""
    points = list(zip(table[cost], table[value]))

    def dominated(c: float, v: float) -> bool:
        return any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2 in points)

    return pd.Series([not dominated(c, v) for c, v in points], index=table.index, dtype=bool)


def runs_target(table: pd.DataFrame) -> float:
    """The target_accuracy the runs were trained with (a grid normally shares one)."""
    for value in table["target_accuracy"]:
        try:
            return float(value)
        except ValueError:
            continue
    return math.nan

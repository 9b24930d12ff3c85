"""The report's sentences: what is established by the study, and what is not, in the table's figures.

Findings lead with time to result (the target, on the validation split), then accuracy, said
honestly: a winner is named only when its 95% interval is clear of the others and Welch's test is
significant; otherwise the tied configurations are listed with the seeds that would separate them.
Then accuracy at equal budget, a recommendation, the tuned ranges (and values at their edge), the
device-hours early stopping saved, and whether choices were made on the test split. Every figure
is read from the table, so sentences and table agree; nothing here reads test/acc for a choice.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from hpcsweep.report.pruning import pruning_sentence
from hpcsweep.report.records import ACCURACY, FINISHED, TEST_ACCURACY, Configuration, RunRecord
from hpcsweep.report.table import finished_rows, most_accurate
from hpcsweep.report.timing import time_sentence
from hpcsweep.report.tuning import TunedGroup

NEAR_BEST = 0.01  # with a single seed, within one accuracy point of the best counts as as good
# a configuration as good as the most accurate replaces it only for at least this saving: with few
# seeds nearly everything ties, and a few percent of device-hours is itself within noise
REAL_SAVING = 0.1


def seeds(count: int) -> str:
    return f"{count} seed{'s' if count != 1 else ''}"


def interval(row: pd.Series, name: str) -> str:
    half = row[f"{name}_ci95"]
    return f"{row[name]:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")


def brief(row: pd.Series) -> str:
    return f"{row['configuration']} (val/acc {interval(row, ACCURACY)} over {seeds(row['n_seeds'])})"


def describe(row: pd.Series, device: str) -> str:
    tested = "" if math.isnan(row[TEST_ACCURACY]) else f", test/acc {interval(row, TEST_ACCURACY)}"
    tuned = f", best of {row['tuned']}" if row["tuned"] else ""
    return (
        f"{row['configuration']} (val/acc {interval(row, ACCURACY)} over {seeds(row['n_seeds'])}{tested}, "
        f"{row['gpu_hours']:.3g} {device}{tuned})"
    )


def separation(best: pd.Series, other: pd.Series) -> str:
    """How many seeds per configuration the measured difference needs, as the table has it."""
    pair = f"{best['configuration']} and {other['configuration']}"
    needed = other["seeds_to_separate"]
    if math.isnan(needed):
        return f"seeds needed to separate {pair}: cannot say: one seed"
    if math.isinf(needed):
        return f"no practical number of seeds would separate {pair} at the measured spread"
    return f"about {int(needed)} seeds per configuration would separate {pair} at the measured spread"


def tied_mask(rows: pd.DataFrame) -> pd.Series:
    """True where the table found the row tied with the best (False: separated; None: cannot say)."""
    return rows["tied_with_best"].map(lambda verdict: verdict is True).astype(bool)


def accuracy_sentence(done: pd.DataFrame, device: str) -> str:
    best = most_accurate(done)
    others = done[done["configuration"] != best["configuration"]]
    tied = others[tied_mask(others)]
    unknown = others[others["tied_with_best"].isna()]
    if not tied.empty:
        runner = most_accurate(tied)
        names = ", ".join(brief(row) for _, row in tied.iterrows())
        return (
            f"Tied within noise for the highest val/acc: {describe(best, device)} and {names} "
            f"(95% intervals overlap or Welch's t-test p >= 0.05); {separation(best, runner)}."
        )
    if not unknown.empty:
        runner = most_accurate(unknown)
        return f"Highest val/acc, not established: {describe(best, device)}; {separation(best, runner)}."
    if others.empty:
        return f"Most accurate: {describe(best, device)}; no other configuration finished to compare it with."
    return (
        f"Most accurate: {describe(best, device)}, ahead of every other configuration "
        f"(95% intervals apart, Welch's t-test p < 0.05)."
    )


def ceiling_2_significant(value: float) -> float:
    """A round threshold at or above `value` (0.00157 -> 0.0016), so the median itself is under it."""
    if value <= 0:
        return value
    unit = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(round(value / unit, 9)) * unit


def budget_sentence(done: pd.DataFrame, device: str) -> str:
    """Accuracy at equal budget: the most accurate of those that cost at most the median."""
    budget = ceiling_2_significant(statistics.median(done["gpu_hours"]))
    cheap_best = most_accurate(done[done["gpu_hours"] <= budget])
    same = cheap_best["configuration"] == most_accurate(done)["configuration"]
    named = "the most accurate itself" if same else describe(cheap_best, device)
    return f"Best under {budget:.2g} {device} (the median cost): {named}."


def recommendation(table: pd.DataFrame, device: str) -> str:
    """The cheapest configuration as good as the most accurate (tied within noise with it or, where
    a single seed leaves that unknown, within NEAR_BEST of its val/acc) that saves at least
    REAL_SAVING of its device-hours; else the most accurate."""
    done = finished_rows(table)
    if done.empty:
        return "Recommendation: none — no configuration finished; fix the failures listed in the table first."
    best = most_accurate(done)
    unknown_but_close = done["tied_with_best"].isna() & (done[ACCURACY] >= best[ACCURACY] - NEAR_BEST)
    cheaper = done["gpu_hours"] <= (1 - REAL_SAVING) * best["gpu_hours"]
    good = done[(done["configuration"] == best["configuration"]) | (cheaper & (tied_mask(done) | unknown_but_close))]
    choice = good.sort_values(["gpu_hours", ACCURACY, "configuration"], ascending=[True, False, True]).iloc[0]
    if choice["configuration"] == best["configuration"]:
        advice = (
            f"Recommendation: {describe(best, device)}: the most accurate, and nothing as good costs "
            f"{REAL_SAVING:.0%} less."
        )
    else:
        share = choice["gpu_hours"] / best["gpu_hours"] if best["gpu_hours"] else math.nan
        how = "tied within noise with" if choice["tied_with_best"] is True else f"within {NEAR_BEST} val/acc of"
        advice = (
            f"Recommendation: {describe(choice, device)}: {how} the most accurate "
            f"({best['configuration']}) for {share:.0%} of its {device}."
        )
    if done["n_seeds"].min() < 2:
        advice += " Some configurations have a single seed: differences smaller than seed noise are not established."
    return advice


def tuning_sentences(groups: list[TunedGroup]) -> list[str]:
    tuned = [group for group in groups if group.tuned and group.chosen is not None]
    if not tuned:
        return []
    chosen = "; ".join(f"{group.chosen.label} (of {group.range_text})" for group in tuned)
    summary = f"Each tuned set-up is compared at its best value by mean val/acc over seeds: {chosen}."
    return [summary, *(f"Tuning: {warning}" for group in tuned for warning in group.edge_warnings())]


def runs_validated_on_test(records: list[RunRecord]) -> list[RunRecord]:
    """Finished runs whose val/acc is the test split's: no held-out split (val_size 0, or older runs)."""
    return [record for record in records if record.status == FINISHED and not record.held_out]


def validation_note(records: list[RunRecord]) -> str | None:
    """One sentence when val/acc of finished runs was measured on the test split."""
    finished = [record for record in records if record.status == FINISHED]
    on_test = runs_validated_on_test(records)
    if not on_test:
        return None
    which = "these runs" if len(on_test) == len(finished) else f"{len(on_test)} of the {len(finished)} finished runs"
    return (
        f"Choices were made on the test split: {which} held no validation split out (val_size 0, or runs "
        f"older than it), so their val/acc is the test set's and optimistic for the configurations chosen by it."
    )


def problems(table: pd.DataFrame) -> list[str]:
    """Configurations with runs that neither finished nor were pruned: shown, never averaged in."""
    unfinished = table[table["n_seeds"] + table["n_pruned"] < table["runs"]]
    return [
        f"Not all runs finished for {row.configuration}: {row.status}; only FINISHED runs enter the figures."
        for row in unfinished.itertuples()
    ]


def sentences(
    found: list[Configuration],
    groups: list[TunedGroup],
    records: list[RunRecord],
    table: pd.DataFrame,
    target: float,
    device: str,
) -> list[str]:
    """Every sentence of the report, in the order it is read."""
    done = finished_rows(table)
    compared = [c for c in found if c.label in set(done["configuration"])]
    leading = (
        [time_sentence(compared, done, target, device), accuracy_sentence(done, device), budget_sentence(done, device)]
        if not done.empty
        else ["No configuration finished: there is nothing to compare yet."]
    )
    notes = [pruning_sentence(records, device), validation_note(records)]
    return [
        *leading,
        recommendation(table, device),
        *tuning_sentences(groups),
        *(note for note in notes if note),
        *problems(table),
    ]

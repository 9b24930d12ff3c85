"""`hpcsweep report`: which set-ups train best per GPU-hour, with the evidence, read back from MLflow.

A study is only useful once its runs are compared: seeds averaged, failures shown rather than
averaged in, accuracy weighed against what it cost. This module turns an experiment's (or a
grid's) runs into one row per configuration (the config keys except `seed`), the Pareto front of
accuracy against GPU-hours, sentences that name the winners and a recommendation. It writes them
as CSV, Markdown, a sortable HTML table, one self-contained `index.html`, `summary.json` for
`dvc metrics show` and CSV series for `dvc plots show`; the plots come from `report_plots`.
The folder is written all-or-nothing and uploaded onto the study's launch run.

Everything comes from MLflow runs: params (the config keys, as logged), statuses and metrics.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import itertools
import json
import math
import statistics
import urllib.parse
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd

from hpcsweep.atomic import atomic_dir
from hpcsweep.config import TrainConfig
from hpcsweep.errors import UserError
from hpcsweep.grid import runs as grid_runs
from hpcsweep.report import plots as report_plots

# A configuration is what a run computes apart from its seed: the config keys, as `logged_params`
# logs them. Autologging adds params of its own (optimizer_name, betas, ...) that a run which died
# early lacks; grouping on them would split a failed seed from its finished siblings.
CONFIG_KEYS = [field.name for field in dataclasses.fields(TrainConfig)] + ["loader"]
IDENTITY = [key for key in CONFIG_KEYS if key != "seed"]
PARALLEL_KEYS = ("devices", "num_nodes", "strategy")  # what changes between a 1-GPU run and its DDP twin
DEFAULT_LABEL_KEYS = ("model", "optimizer", "batch_size")  # when nothing varies, still say what ran
HISTORIES = ("val/acc", "epoch_time_s", "train/loss", "train/images_per_s")
FINISHED = "FINISHED"
ACCURACY = "val/acc"
NEAR_BEST = 0.01  # a configuration within one accuracy point of the best counts as as good


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as the report needs it; histories are per epoch, in epoch order, for finished runs."""

    run_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[float]]

    @property
    def gpus(self) -> int:
        return int(self.params.get("devices", 1)) * int(self.params.get("num_nodes", 1))

    @property
    def wall_times(self) -> list[float]:
        """Training seconds at the end of each epoch: the x axis a user waits along."""
        return list(itertools.accumulate(self.history.get("epoch_time_s", [])))

    def final(self, name: str) -> float | None:
        series = self.history.get(name)
        return series[-1] if series else self.metrics.get(name)

    def time_to(self, target: float) -> float | None:
        """Seconds until val/acc first reached `target`, from the history; None if it never did."""
        for accuracy, seconds in zip(self.history.get(ACCURACY, []), self.wall_times):
            if accuracy >= target:
                return seconds
        return None


@dataclasses.dataclass(frozen=True)
class Configuration:
    """The runs of one set-up, seeds (and failed attempts) together; one row of the table."""

    key: tuple[str, ...]  # the IDENTITY params' values
    label: str
    runs: list[RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.status == FINISHED]


# --- reading MLflow ---------------------------------------------------------------------------


def normalised(value: str) -> str:
    """One spelling per number: `mlflow run -P lr=1e-3` logs what the launcher logs as 0.001, and
    `-P lr=1` what it logs as 1.0; whole numbers lose their `.0`, others keep Python's shortest form."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else repr(number)


def epoch_series(measurements) -> list[float]:
    by_step: dict[int, float] = {}
    for measurement in sorted(measurements, key=lambda m: (m.step, m.timestamp)):
        by_step[measurement.step] = measurement.value  # a resumed epoch logged twice: the last one counts
    return [by_step[step] for step in sorted(by_step)]


def record_of(client: mlflow.MlflowClient, run) -> RunRecord:
    status = grid_runs.status_name(run)
    history = (
        {name: epoch_series(client.get_metric_history(run.info.run_id, name)) for name in HISTORIES}
        if status == FINISHED
        else {}
    )  # only finished runs enter means and curves
    params = {key: normalised(value) for key, value in run.data.params.items() if key in CONFIG_KEYS}
    return RunRecord(run.info.run_id, status, params, dict(run.data.metrics), history)


def role(run) -> str | None:
    return run.data.tags.get(grid_runs.ROLE)


def runs_of_experiment(client: mlflow.MlflowClient, name: str) -> tuple[list, str | None]:
    """The experiment's training runs (launch runs are bookkeeping) and its newest launch run."""
    found = client.get_experiment_by_name(name)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise UserError(f"no experiment named {name!r} in {client.tracking_uri}; experiments there: {known}")
    runs = grid_runs.search_newest_first(client, [found.experiment_id])
    training = [run for run in runs if role(run) != "launch"]
    if not training:
        raise UserError(f"experiment {name!r} in {client.tracking_uri} has no runs: train or launch a grid first")
    launches = [run for run in runs if role(run) == "launch"]
    return training, launches[0].info.run_id if launches else None


def runs_of_grid(client: mlflow.MlflowClient, name: str) -> tuple[list, str | None]:
    runs = grid_runs.grid_runs(client, name)
    if not runs:
        raise UserError(f"no grid named {name!r} in {client.tracking_uri}: no runs carry tag grid={name}")
    experiments = sorted({run.info.experiment_id for run in runs})
    launches = grid_runs.search_newest_first(
        client, experiments, f"tags.grid = '{name}' and tags.`{grid_runs.ROLE}` = 'launch'"
    )
    return runs, launches[0].info.run_id if launches else None


def fetch_records(
    client: mlflow.MlflowClient, experiment: str | None, grid: str | None
) -> tuple[list[RunRecord], str | None]:
    """The newest run of every configuration hash, as records, and the launch run to upload onto."""
    if (experiment is None) == (grid is None):
        raise UserError("report: give exactly one of --experiment NAME or --grid NAME")
    runs, launch = runs_of_grid(client, grid) if grid else runs_of_experiment(client, experiment)
    # a run with no params (created, then lost before anything was logged) has no configuration
    return [record_of(client, run) for run in grid_runs.latest_by_hash(runs).values() if run.data.params], launch


# --- configurations and the table -------------------------------------------------------------


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


# --- the front, the findings, the recommendation ----------------------------------------------


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


# --- the summary --------------------------------------------------------------------------------


def summary_numbers(records: list[RunRecord], table: pd.DataFrame, front: pd.Series) -> dict[str, float]:
    """Flat numbers for `dvc metrics show`; figures that do not exist (nothing finished) are left out."""
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
            best_val_acc=best[ACCURACY], best_gpu_hours=best["gpu_hours"], best_total_time_s=best["total_time_s"]
        )
    return {
        key: float(value) if isinstance(value, float) else int(value)
        for key, value in numbers.items()
        if not (isinstance(value, float) and math.isnan(value))
    }


# --- rendering -----------------------------------------------------------------------------------


def number(value: float, style: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, style)


def shown_params(varying: list[str]) -> list[str]:
    return [name for name in IDENTITY if name in varying or name == "batch_size"]


def display_rows(table: pd.DataFrame, varying: list[str]) -> list[dict[str, tuple[str, object]]]:
    """The table as people read it: (text, sort value) per column, mean ± std in one cell."""

    def spread(row, name):
        std = row[f"{name}_std"]
        return number(row[name], ".4f") + ("" if math.isnan(std) else f" ± {std:.4f}"), row[name]

    def micro(row):
        used = number(row["micro_batch_size_used"], ".0f")
        auto = row["micro_batch_size"] == "auto" and used != "–"
        return (f"{used} (auto)" if auto else used), row["micro_batch_size_used"]

    def target(row):
        if row["n_seeds"] == 0:
            return "–", math.nan
        if math.isnan(row["time_to_target_s"]):
            return f"not reached ({row['target_accuracy']})", math.inf
        seeds = f"{row['n_reached_target']}/{row['n_seeds']} seeds"
        return f"{row['time_to_target_s']:.1f} ({seeds})", row["time_to_target_s"]

    columns = {
        **{name: (lambda row, name=name: (row[name], row[name])) for name in shown_params(varying)},
        "status": lambda row: (row["status"], row["status"]),
        "n_seeds": lambda row: (str(row["n_seeds"]), row["n_seeds"]),
        ACCURACY: lambda row: spread(row, ACCURACY),
        "best_val_acc": lambda row: spread(row, "best_val_acc"),
        "time_to_target_s": target,
        "total_time_s": lambda row: (number(row["total_time_s"], ".1f"), row["total_time_s"]),
        "train/images_per_s": lambda row: (number(row["train/images_per_s"], ".0f"), row["train/images_per_s"]),
        "gpu_hours": lambda row: (number(row["gpu_hours"], ".3g"), row["gpu_hours"]),
        "micro_batch_size": micro,
        "accumulate_grad_batches": lambda row: (
            number(row["accumulate_grad_batches"], ".0f"),
            row["accumulate_grad_batches"],
        ),
    }
    return [{name: cell(row) for name, cell in columns.items()} for _, row in table.iterrows()]


def markdown_table(rows: list[dict[str, tuple[str, object]]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[name][0]).replace("|", "\\|") for name in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


SORT_SCRIPT = """<script>
// Click a header to sort by it, again to reverse. Cells carry their raw value in data-sort;
// blank values (nothing finished) stay last either way.
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], up = th.dataset.order !== "up";
  th.dataset.order = up ? "up" : "down";
  const value = row => row.cells[column].dataset.sort, rows = [...body.rows].sort((a, b) => {
    const x = value(a), y = value(b), nx = Number(x), ny = Number(y);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : (nx > ny) - (nx < ny);
    return up ? order : -order;
  });
  body.append(...rows);
}));
</script>"""


def sort_key(value: object) -> str:
    """What the page's script sorts on: JavaScript's spelling of infinity, blank for no value."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return "Infinity" if value == math.inf else str(value)


def html_table(rows: list[dict[str, tuple[str, object]]]) -> str:
    if not rows:
        return "<p>No runs.</p>"
    head = "".join(f"<th title='click to sort'>{html.escape(name)}</th>" for name in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td data-sort='{html.escape(sort_key(sort))}'>{html.escape(str(text))}</td>"
            for text, sort in row.values()
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table class='sortable'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n{SORT_SCRIPT}"


STYLE = """<style>
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #eee; cursor: pointer; } tr:nth-child(even) { background: #f8f8f8; }
figure { margin: 1.5em 0; } img { max-width: 100%; } .skipped { color: #777; }
</style>"""


def page(
    title: str, source: str, sentences: list[str], constant: str, table: str, plots: list[report_plots.Plot]
) -> str:
    items = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in sentences)
    figures = "".join(
        f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{base64.b64encode(p.png).decode()}'>"
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>\n"
        if p.png
        else f"<p class='skipped'>Not drawn: {html.escape(p.title)} — {html.escape(p.skipped or '')}.</p>\n"
        for p in plots
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}</head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n<p>{html.escape(source)}</p>\n<h2>Findings</h2><ul>{items}</ul>\n"
        f"<h2>Configurations</h2><p>{html.escape(constant)}</p>\n{table}\n<h2>Plots</h2>\n{figures}</body></html>\n"
    )


def constant_params(table: pd.DataFrame, varying: list[str]) -> str:
    same = [name for name in IDENTITY if name not in shown_params(varying)]
    return "Same in every configuration: " + ", ".join(f"{name}={table[name].iloc[0]}" for name in same) + "."


# --- the whole report ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the files are written from, computed once."""

    title: str
    source: str
    records: list[RunRecord]
    found: list[Configuration]
    varying: list[str]
    table: pd.DataFrame
    front: pd.Series  # True for rows of `table` on the Pareto front
    sentences: list[str]


def runs_target(table: pd.DataFrame) -> float:
    """The target_accuracy the runs were trained with (a grid normally shares one)."""
    for value in table["target_accuracy"]:
        try:
            return float(value)
        except ValueError:
            continue
    return math.nan


def analyse(records: list[RunRecord], title: str, source: str, target: float | None) -> Report:
    found, varying = configurations(records)
    table = configuration_table(found, target)
    done = finished_rows(table)
    front = pd.Series(False, index=table.index, dtype=bool)
    front[done.index] = pareto_front(done)
    sentences = [
        *findings(found, table, target if target is not None else runs_target(table)),
        recommendation(table),
        *problems(table),
    ]
    if target is not None:
        sentences.append(
            f"Time to target recomputed for val/acc {target} from each run's val/acc history "
            f"and cumulative epoch_time_s."
        )
    return Report(title, source, records, found, varying, table, front, sentences)


def pareto_points(report: Report) -> pd.DataFrame:
    done = finished_rows(report.table)
    return pd.DataFrame(
        {
            "gpu_hours": done["gpu_hours"],
            "val_acc": done[ACCURACY],
            "configuration": done["configuration"],
            "on_front": report.front[done.index],
        }
    )


def write_files(report: Report, folder: Path) -> None:
    rows = display_rows(report.table, report.varying)
    curves = curves_frame(report.found)
    pareto = pareto_points(report)
    plots = report_plots.draw_all(
        curves, pareto, report.table, report.varying, scaling_frame(report.table, report.varying)
    )
    report.table.to_csv(folder / "table.csv", index=False)
    (folder / "table.md").write_text(markdown_table(rows))
    (folder / "table.html").write_text(
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>{STYLE}</head><body>\n{html_table(rows)}\n</body></html>\n"
    )
    pareto.to_csv(folder / "pareto.csv", index=False)
    curves.to_csv(folder / "curves.csv", index=False)
    (folder / "summary.json").write_text(
        json.dumps(summary_numbers(report.records, report.table, report.front), indent=2) + "\n"
    )
    (folder / "summary.md").write_text(f"# {report.title}\n\n" + "".join(f"- {s}\n" for s in report.sentences))
    for plot in plots:
        if plot.png:
            (folder / f"{plot.name}.png").write_bytes(plot.png)
    (folder / "index.html").write_text(
        page(
            report.title,
            report.source,
            report.sentences,
            constant_params(report.table, report.varying),
            html_table(rows),
            plots,
        )
    )


def shareable(uri: str) -> str:
    """The tracking URI without a password: reports are passed around (postgresql://user:secret@...)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.password:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def build_report(
    client: mlflow.MlflowClient,
    out_dir: Path,
    experiment: str | None = None,
    grid: str | None = None,
    target_accuracy: float | None = None,
) -> Path:
    """Write the report of an experiment's or a grid's runs into `out_dir` (replacing it whole) and
    upload it as artifact `report` onto the newest launch run, if there is one. Returns `out_dir`."""
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise UserError(f"--target-accuracy={target_accuracy}: expected a fraction in (0, 1], e.g. 0.9")
    records, launch = fetch_records(client, experiment, grid)
    if not records:
        what = f"grid {grid!r}" if grid else f"experiment {experiment!r}"
        raise UserError(f"{what}: its runs hold no params, so no configuration to compare")
    title = f"hpcsweep report: {'grid ' + grid if grid else 'experiment ' + experiment}"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    source = (
        f"{len(records)} runs (the newest per configuration hash) from {shareable(client.tracking_uri)}, {stamp}. "
        f"Means and standard deviations are over FINISHED seeds only."
    )
    report = analyse(records, title, source, target_accuracy)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as folder:
        write_files(report, folder)
    if launch:
        client.log_artifacts(launch, str(out_dir), artifact_path="report")
    return out_dir

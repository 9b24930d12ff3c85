"""`hpcsweep report`: read a study's runs from MLflow, analyse them and write the report folder.

This module only strings the other parts together: `records` fetches the runs; `table` (with
`tuning`, `statistics` and `timing`), `findings`, `frames` and `summary` compute the table, front
and sentences once into a `Report`; and `render` and `plots` turn it into files: CSV, Markdown, a
sortable HTML table, one self-contained `index.html`, `summary.json` for `dvc metrics show` and
CSV series for `dvc plots show`. The folder is written all-or-nothing and
uploaded onto the study's launch run. It replaces the `--out` folder whole, so that folder must be
new, empty or an earlier report: each report holds a marker file that says it is one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import mlflow
import pandas as pd

from hpcsweep.atomic import atomic_dir
from hpcsweep.errors import UserError
from hpcsweep.report import plots as report_plots
from hpcsweep.report.findings import sentences
from hpcsweep.report.frames import curves_frame, pareto_points, scaling_frame
from hpcsweep.report.records import Configuration, RunRecord, fetch_records
from hpcsweep.report.render import (
    constant_params,
    display_rows,
    html_table,
    markdown_table,
    page,
    table_page,
    tuning_rows,
)
from hpcsweep.report.summary import summary_numbers
from hpcsweep.report.table import configuration_table, configurations, finished_rows, pareto_front, runs_target
from hpcsweep.report.timing import device_hours_name
from hpcsweep.report.tuning import TunedGroup, tuned_groups
from hpcsweep.tracking.credentials import redact

REPORT_MARKER = ".hpcsweep-report"


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the files are written from, computed once."""

    title: str
    source: str
    records: list[RunRecord]
    found: list[Configuration]
    varying: list[str]
    groups: list[TunedGroup]
    table: pd.DataFrame
    front: pd.Series  # True for rows of `table` on the Pareto front
    device: str  # what its device-hours are called: "GPU-hours", "CPU-hours" or "device-hours"
    sentences: list[str]


def analyse(records: list[RunRecord], title: str, source: str, target: float | None) -> Report:
    found, varying = configurations(records)
    groups = tuned_groups(found, varying)
    table = configuration_table(found, target, groups)
    device = device_hours_name(records)
    done = finished_rows(table)
    front = pd.Series(False, index=table.index, dtype=bool)
    front[done.index] = pareto_front(done)
    said = sentences(found, groups, records, table, target if target is not None else runs_target(table), device)
    if target is not None:
        said.append(
            f"Time to target recomputed for val/acc {target} from each run's val/acc history "
            f"and cumulative epoch_time_s."
        )
    return Report(title, source, records, found, varying, groups, table, front, device, said)


def write_files(report: Report, folder: Path) -> None:
    rows = display_rows(report.table, report.varying, report.device)
    tuning = tuning_rows(report.table, report.varying)
    compared = set(finished_rows(report.table)["configuration"])
    curves = curves_frame([c for c in report.found if c.label in compared])
    pareto = pareto_points(report.table, report.front)
    shown = report.table[report.table["chosen"]]
    plots = report_plots.draw_all(
        curves, pareto, shown, report.varying, scaling_frame(report.table, report.varying), report.device
    )
    report.table.to_csv(folder / "table.csv", index=False)
    (folder / "table.md").write_text(markdown_table(rows))
    (folder / "table.html").write_text(table_page(rows))
    if tuning:
        (folder / "tuning.md").write_text(markdown_table(tuning))
    pareto.to_csv(folder / "pareto.csv", index=False)
    curves.to_csv(folder / "curves.csv", index=False)
    summary = summary_numbers(report.records, report.table, report.front, report.device)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "summary.md").write_text(f"# {report.title}\n\n" + "".join(f"- {s}\n" for s in report.sentences))
    for plot in plots:
        if plot.png:
            (folder / f"{plot.name}.png").write_bytes(plot.png)
    (folder / REPORT_MARKER).write_text("written by `hpcsweep report`, which replaces this folder whole\n")
    (folder / "index.html").write_text(
        page(
            report.title,
            report.source,
            report.sentences,
            constant_params(report.table, report.varying),
            html_table(rows),
            plots,
            html_table(tuning) if tuning else "",
        )
    )


def check_out_dir(out_dir: Path) -> Path:
    """The folder a report may replace, resolved (`--out .` is the working folder): a new or empty
    one, or an earlier report; never a folder holding anything else."""
    folder = Path(out_dir).resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out_dir}: {folder} is a file; give a new or empty folder, or an earlier report")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / REPORT_MARKER).is_file():
        raise UserError(
            f"--out {out_dir}: {folder} is not empty and not an earlier report (no {REPORT_MARKER} in it), "
            f"and a report replaces its folder whole; give a new or empty folder, or an earlier report"
        )
    return folder


def build_report(
    client: mlflow.MlflowClient,
    out_dir: Path,
    experiment: str | None = None,
    grid: str | None = None,
    target_accuracy: float | None = None,
) -> Path:
    """Write the report of an experiment's or a grid's runs into `out_dir` (replacing it whole: it
    must be new, empty or an earlier report) and upload it as artifact `report` onto the newest
    launch run, if there is one. Returns the folder written."""
    out_dir = check_out_dir(out_dir)
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise UserError(f"--target-accuracy={target_accuracy}: expected a fraction in (0, 1], e.g. 0.9")
    records, launch = fetch_records(client, experiment, grid)
    if not records:
        what = f"grid {grid!r}" if grid else f"experiment {experiment!r}"
        raise UserError(f"{what}: its runs hold no params, so no configuration to compare")
    title = f"hpcsweep report: {'grid ' + grid if grid else 'experiment ' + experiment}"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    source = (
        f"{len(records)} runs (the newest per configuration hash) from {redact(client.tracking_uri)}, {stamp}. "
        f"Means and 95% confidence intervals (Student's t) are over FINISHED seeds only; "
        f"p vs best is Welch's t-test against the most accurate configuration."
    )
    report = analyse(records, title, source, target_accuracy)
    with atomic_dir(out_dir) as folder:
        write_files(report, folder)
    if launch:
        client.log_artifacts(launch, str(out_dir), artifact_path="report")
    return out_dir

"""The report as people read it: the configuration table in Markdown and sortable HTML, and the page.

Rendering is kept apart from the analysis so that the figures are computed once and only
formatted here: mean ± 95% confidence interval in one cell, blanks for what did not finish,
device-hours named for the device, the values a tuned set-up tried in a table of their own, and
one self-contained `index.html` (plots inlined as PNG, a few lines of script to sort the table)
that can be mailed or uploaded without the files beside it.
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from hpcsweep.report.plots import Plot
from hpcsweep.report.records import ACCURACY, IDENTITY, TEST_ACCURACY
from hpcsweep.report.table import finished_rows, most_accurate

Cell = tuple[str, object]  # the text shown, and the value the page sorts on


def number(value: float, style: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, style)


def shown_params(varying: list[str]) -> list[str]:
    return [name for name in IDENTITY if name in varying or name == "batch_size"]


def spread(row: pd.Series, name: str) -> Cell:
    half = row[f"{name}_ci95"]
    return number(row[name], ".4f") + ("" if math.isnan(half) else f" ± {half:.4f}"), row[name]


def versus_best(row: pd.Series, finished: set[str], best: str | None) -> Cell:
    """Welch's p-value against the most accurate (`best`, of the `finished` configurations), and
    the verdict the findings use."""
    if row["configuration"] not in finished:
        return "–", math.nan
    if row["configuration"] == best:
        return "best", -1.0
    if pd.isna(row["tied_with_best"]):
        return "– (one seed)", math.nan
    verdict = " (tied)" if row["tied_with_best"] else ""
    return f"{row['p_vs_best']:.3f}{verdict}", row["p_vs_best"]


def display_rows(table: pd.DataFrame, varying: list[str], device: str = "GPU-hours") -> list[dict[str, Cell]]:
    """The compared table as people read it, fastest to the target first: (text, sort value) per
    column, mean ± 95% CI in one cell; the tuned range, test/acc and MFU only when some
    configuration has them (a study on CPUs or unlisted GPUs has no MFU)."""
    done = finished_rows(table)
    shown = table[table["chosen"]]
    finished = set(done["configuration"])  # once, not per row: a 1000-run study has hundreds of rows
    best = None if done.empty else most_accurate(done)["configuration"]

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

    def optional(name: str, cell) -> dict:
        return {name: cell} if (shown[name].notna() & (shown[name].astype(str) != "")).any() else {}

    columns = {
        **{name: (lambda row, name=name: (row[name], row[name])) for name in shown_params(varying)},
        **optional("tuned", lambda row: (row["tuned"], row["tuned"])),
        "status": lambda row: (row["status"], row["status"]),
        "n_seeds": lambda row: (str(row["n_seeds"]), row["n_seeds"]),
        "time_to_target_s": target,
        f"{device} to target": lambda row: (number(row["gpu_hours_to_target"], ".3g"), row["gpu_hours_to_target"]),
        ACCURACY: lambda row: spread(row, ACCURACY),
        "p vs best": lambda row: versus_best(row, finished, best),
        **optional(TEST_ACCURACY, lambda row: spread(row, TEST_ACCURACY)),
        "total_time_s": lambda row: (number(row["total_time_s"], ".1f"), row["total_time_s"]),
        "train/images_per_s": lambda row: (number(row["train/images_per_s"], ".0f"), row["train/images_per_s"]),
        **optional("train/mfu", lambda row: (number(row["train/mfu"], ".1%"), row["train/mfu"])),
        device: lambda row: (number(row["gpu_hours"], ".3g"), row["gpu_hours"]),
        "micro_batch_size": micro,
        "accumulate_grad_batches": lambda row: (
            number(row["accumulate_grad_batches"], ".0f"),
            row["accumulate_grad_batches"],
        ),
    }
    return [{name: cell(row) for name, cell in columns.items()} for _, row in shown.iterrows()]


def tuning_rows(table: pd.DataFrame, varying: list[str]) -> list[dict[str, Cell]]:
    """Every value each tuned set-up tried, set-up by set-up: the evidence behind its chosen value."""
    tried = table[table["tuned_keys"] != ""].sort_values(["group", "configuration"])
    keys = [name for name in IDENTITY if any(name in names.split(",") for names in tried["tuned_keys"])]
    return [
        {
            "set-up": (row["group"], row["group"]),
            **{name: (row[name], row[name]) for name in keys if name in varying},
            "status": (row["status"], row["status"]),
            "n_seeds": (str(row["n_seeds"]), row["n_seeds"]),
            ACCURACY: spread(row, ACCURACY),
            "chosen": ("chosen" if row["chosen"] and row["n_seeds"] else "", int(bool(row["chosen"]))),
        }
        for _, row in tried.iterrows()
    ]


def markdown_table(rows: list[dict[str, tuple[str, object]]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[name][0]).replace("|", "\\|") for name in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


SORT_SCRIPT = """<script>
// Click a header to sort its table by it, again to reverse. Cells carry their raw value in
// data-sort; blank values (nothing finished) stay last either way.
document.querySelectorAll("table.sortable").forEach(table => table.querySelectorAll("th").forEach((th, column) =>
 th.addEventListener("click", () => {
  const body = table.tBodies[0], up = th.dataset.order !== "up";
  th.dataset.order = up ? "up" : "down";
  const value = row => row.cells[column].dataset.sort, rows = [...body.rows].sort((a, b) => {
    const x = value(a), y = value(b), nx = Number(x), ny = Number(y);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : (nx > ny) - (nx < ny);
    return up ? order : -order;
  });
  body.append(...rows);
})));
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
    return f"<table class='sortable'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


STYLE = """<style>
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #eee; cursor: pointer; } tr:nth-child(even) { background: #f8f8f8; }
figure { margin: 1.5em 0; } img { max-width: 100%; } .skipped { color: #777; }
</style>"""


def table_page(rows: list[dict[str, tuple[str, object]]]) -> str:
    """The sortable table alone, as a page of its own, for those who want only the numbers."""
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>{STYLE}</head><body>\n{html_table(rows)}\n"
        f"{SORT_SCRIPT}\n</body></html>\n"
    )


def page(
    title: str, source: str, sentences: list[str], constant: str, table: str, plots: list[Plot], tuning: str = ""
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
        f"<h2>Configurations</h2><p>{html.escape(constant)}</p>\n{table}\n"
        + (f"<h2>Tuned values tried</h2>\n{tuning}\n" if tuning else "")
        + f"{SORT_SCRIPT}\n<h2>Plots</h2>\n{figures}</body></html>\n"
    )


def constant_params(table: pd.DataFrame, varying: list[str]) -> str:
    same = [name for name in IDENTITY if name not in shown_params(varying)]
    return "Same in every configuration: " + ", ".join(f"{name}={table[name].iloc[0]}" for name in same) + "."

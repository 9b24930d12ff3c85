"""The report's figures, as PNG bytes: the evidence behind its sentences.

Kept apart from `analysis` so that the numbers can be computed and tested without drawing. Each
function takes plain tables and returns a `Plot`; a plot the data cannot support (nothing
finished, a parameter that never varies) comes back with the reason instead of an empty figure,
and the page says so. Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas: no
pyplot state and no display, so it works on compute nodes and in threads alike.
"""

from __future__ import annotations

import dataclasses
import io

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDE = (10, 5)
PAIR = (12, 4.5)
MAX_CURVES = 12  # lines a curve plot draws: the most accurate configurations


@dataclasses.dataclass(frozen=True)
class Plot:
    name: str  # file name without .png
    title: str
    png: bytes | None = None
    skipped: str | None = None  # why it was not drawn


def png_of(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def style(index: int) -> dict[str, str]:
    """Ten colours, then the same colours dashed, dotted...: forty lines stay told apart."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}


def legend_outside(axes, title: str | None = None) -> None:
    """Labels are whole configurations: beside the axes they stay readable and hide no data."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title=title, title_fontsize=8, frameon=False)


def most_accurate_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """The curves of the MAX_CURVES configurations with the highest final val/acc, in their order:
    a legend cannot name hundreds of lines, and drawing them took most of a large study's report."""
    final = curves.groupby("configuration", sort=False)["val_acc"].last()
    return curves[curves["configuration"].isin(final.nlargest(MAX_CURVES).index)]


def per_configuration(curves: pd.DataFrame, name: str, title: str, y: str, ylabel: str, x: str, xlabel: str) -> Plot:
    if curves.empty:
        return Plot(name, title, skipped="no configuration finished")
    count = curves["configuration"].nunique()
    if count > MAX_CURVES:
        curves = most_accurate_curves(curves)
        title = f"{title}: the {MAX_CURVES} most accurate of {count} configurations"
    figure = Figure(figsize=WIDE)
    axes = figure.add_subplot()
    for index, (label, curve) in enumerate(curves.groupby("configuration", sort=False)):
        axes.plot(curve[x], curve[y], marker="o", markersize=3, label=label, **style(index))
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.set_xlim(left=0)
    if x == "epoch":
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.5
    axes.grid(alpha=0.3)
    legend_outside(axes)
    return Plot(name, title, png_of(figure))


def accuracy_curves(curves: pd.DataFrame) -> Plot:
    return per_configuration(
        curves,
        "accuracy_vs_time",
        "val/acc against wall-clock training time (mean over seeds)",
        "val_acc",
        "val/acc",
        "wall_time_s",
        "training time, cumulative epoch_time_s (s)",
    )


def loss_curves(curves: pd.DataFrame) -> Plot:
    return per_configuration(
        curves, "train_loss", "train/loss per epoch (mean over seeds)", "train_loss", "train/loss", "epoch", "epoch"
    )


def pareto(points: pd.DataFrame, device: str = "GPU-hours") -> Plot:
    title = f"val/acc against {device}: the Pareto front"
    if points.empty:
        return Plot("pareto", title, skipped="no configuration finished")
    figure = Figure(figsize=WIDE)
    axes = figure.add_subplot()
    front = points[points["on_front"]].sort_values("gpu_hours")
    rest = points[~points["on_front"]]
    axes.scatter(rest["gpu_hours"], rest["val_acc"], color="0.6", label="dominated")
    axes.plot(
        front["gpu_hours"], front["val_acc"], color="tab:red", marker="o", drawstyle="steps-post", label="Pareto front"
    )
    # front points are numbered on the plot and named in the legend: full labels would overlap
    for number, row in enumerate(front.itertuples(), start=1):
        axes.annotate(
            str(number),
            (row.gpu_hours, row.val_acc),
            textcoords="offset points",
            xytext=(4, -12 if number % 2 else 4),  # the front rises: odd ones below, even above
            fontsize=9,
            color="tab:red",
            weight="bold",
        )
        axes.plot([], [], " ", label=f"{number}: {row.configuration}")
    if points["gpu_hours"].max() > 10 * points["gpu_hours"].min() > 0:
        axes.set_xscale("log")  # device-hours of 1 and 64 GPUs side by side
    axes.set(
        xlabel=f"{device} (devices x num_nodes x total_time_s / 3600, lower is better)",
        ylabel="val/acc (mean final, higher is better)",
        title=title,
    )
    axes.grid(alpha=0.3)
    legend_outside(axes)
    return Plot("pareto", title, png_of(figure))


def group_label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{key}={row[key]}" for key in keys) or "all"


def against_batch_size(table: pd.DataFrame, varying: list[str]) -> Plot:
    title = "val/acc and training time against batch_size"
    done = table[table["n_seeds"] > 0]
    if done["batch_size"].nunique() < 2:
        return Plot("batch_size", title, skipped="batch_size does not vary among finished configurations")
    keys = [key for key in varying if key != "batch_size"]
    done = done.assign(
        group=[group_label(row, keys) for _, row in done.iterrows()], batch=done["batch_size"].astype(int)
    ).sort_values("batch")
    done = done[done.groupby("group")["batch"].transform("nunique") > 1]  # a lone point shows no trend
    if done.empty:
        return Plot("batch_size", title, skipped="no configuration was run at more than one batch_size")
    figure = Figure(figsize=PAIR)
    accuracy, seconds = figure.subplots(1, 2)
    for index, (label, group) in enumerate(done.groupby("group", sort=False)):
        accuracy.errorbar(
            group["batch"],
            group["val/acc"],
            yerr=group["val/acc_std"].fillna(0),
            marker="o",
            capsize=3,
            label=label,
            **style(index),
        )
        seconds.plot(group["batch"], group["total_time_s"], marker="o", label=label, **style(index))
    for axes, ylabel in ((accuracy, "val/acc (mean final ± std)"), (seconds, "total_time_s (mean, s)")):
        axes.set_xscale("log", base=2)
        axes.set(xlabel="batch_size (effective, global)", ylabel=ylabel)
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    legend_outside(seconds)
    return Plot("batch_size", title, png_of(figure))


def scaling(frame: pd.DataFrame) -> Plot:
    title = "DDP speed-up and scaling efficiency against GPUs (devices x num_nodes)"
    if frame.empty:
        return Plot(
            "scaling",
            title,
            skipped="the number of GPUs does not vary against a 1-GPU run of otherwise equal configurations",
        )
    figure = Figure(figsize=PAIR)
    speedup, efficiency = figure.subplots(1, 2)
    for index, (label, group) in enumerate(frame.groupby("group", sort=False)):
        speedup.plot(group["gpus"], group["speedup"], marker="o", label=label, **style(index))
        efficiency.plot(group["gpus"], group["efficiency"], marker="o", label=label, **style(index))
    most = frame["gpus"].max()
    speedup.plot([1, most], [1, most], linestyle="--", color="0.5", label="ideal")
    efficiency.axhline(1.0, linestyle="--", color="0.5", label="ideal")
    speedup.set(xlabel="GPUs", ylabel="speed-up (train/images_per_s over 1 GPU)")
    efficiency.set(
        xlabel="GPUs",
        ylabel="scaling efficiency (speed-up / GPUs)",
        ylim=(0, 1.1 * max(1.0, frame["efficiency"].max())),
    )
    for axes in (speedup, efficiency):
        axes.set_xticks(sorted(frame["gpus"].unique()))
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    legend_outside(efficiency)
    return Plot("scaling", title, png_of(figure))


def draw_all(
    curves: pd.DataFrame,
    points: pd.DataFrame,
    table: pd.DataFrame,
    varying: list[str],
    scaling_data: pd.DataFrame,
    device: str = "GPU-hours",
) -> list[Plot]:
    """Every plot of the report; `device` names the device-hours on their axes."""
    return [
        accuracy_curves(curves),
        pareto(points, device),
        against_batch_size(table, varying),
        scaling(scaling_data),
        loss_curves(curves),
    ]

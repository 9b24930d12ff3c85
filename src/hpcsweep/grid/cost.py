"""What a grid will cost, said before it is launched: device-hours estimated from earlier runs.

`hpcsweep grid --dry-run` prints it. The earlier runs are the FINISHED ones on the tracking
store, in any experiment, with the point's model, batch_size, precision (the config value, as
the param holds it) and device type (the `device_type` tag every training sets): one query per
distinct setting, so a 1000-point grid of a few settings costs a few round trips. A run's
device-seconds per epoch-image (total_time_s x devices x num_nodes / (max_epochs x images per
epoch)) is scaled by each point's max_epochs and images per epoch; the median over the runs on
the point's number of devices is taken, over all the setting's runs where none ran on that many
(as if time per image scaled perfectly with devices). Images per epoch are limit_train_samples,
capped by the prepared training split (stats.json); a run without a limit trained on the whole
split, taken as the size of the point's own.

A point's device type is CPU for accelerator=cpu, GPU for accelerator=gpu or where slurm.extra
asks SLURM for GPUs; accelerator=auto otherwise is counted as CPU (finding out whether this
machine has CUDA would import torch, seconds for a dry run), and the estimate says so.
The functions that decide are pure; `all_experiments` and `finished_runs` are the queries.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from hpcsweep.config import Config, TrainConfig
from hpcsweep.errors import UserError
from hpcsweep.grid.executors.slurm import gpu_requests
from hpcsweep.params_file import SQLITE_PREFIX
from hpcsweep.tracking.client import check_tracking_server
from hpcsweep.tracking.credentials import redact, redact_text
from hpcsweep.tracking.tags import DEVICE_TYPE

STATS_FILE = "stats.json"  # written by data/prepare.py; its image counts are all that is read here
PAGE_SIZE = 1000
HEADER = "cost estimate"


class Setting(NamedTuple):
    """What a point's speed is compared on: earlier runs must agree on all of it."""

    model: str
    batch_size: int
    precision: str
    device_type: str  # "GPU" or "CPU"

    def __str__(self) -> str:
        return f"model={self.model}, batch_size={self.batch_size}, precision={self.precision}, on {self.device_type}"


@dataclass(frozen=True)
class Work:
    """How much one point trains: epochs x images per epoch, on devices x num_nodes devices."""

    setting: Setting
    epochs: int
    images: int
    devices: int


@dataclass(frozen=True)
class PastRun:
    device_seconds_per_image: float  # per image of one epoch, all devices together
    devices: int


@dataclass(frozen=True)
class GroupEstimate:
    setting: Setting
    points: int
    runs: int  # earlier runs it rests on; 0: no estimate
    device_hours: float


def device_type(train: TrainConfig, slurm_gpus: bool) -> str:
    """GPU where the training is told to use one or SLURM is asked for one; CPU otherwise."""
    return "GPU" if train.accelerator == "gpu" or (train.accelerator == "auto" and slurm_gpus) else "CPU"


def images_per_epoch(limit: int | None, train_split: int) -> int:
    return min(limit, train_split) if limit else train_split


def work_of(config: Config, train_split: int) -> Work:
    train = config.train
    setting = Setting(
        train.model, train.batch_size, train.precision, device_type(train, bool(gpu_requests(config.slurm.extra)))
    )
    images = images_per_epoch(train.limit_train_samples, train_split)
    return Work(setting, train.max_epochs, images, train.devices * train.num_nodes)


def past_run(params: dict[str, str], total_time_s: float | None, train_split: int) -> PastRun | None:
    """A FINISHED run's speed from its params and total_time_s; None where something it needs is missing."""
    try:
        limit = None if params.get("limit_train_samples") in (None, "None") else int(params["limit_train_samples"])
        epochs, devices = int(params["max_epochs"]), int(params["devices"]) * int(params["num_nodes"])
    except (KeyError, ValueError):
        return None
    images = images_per_epoch(limit, train_split)
    if not total_time_s or total_time_s <= 0 or epochs < 1 or devices < 1 or images < 1:
        return None
    return PastRun(total_time_s * devices / (epochs * images), devices)


def point_device_hours(work: Work, history: Sequence[PastRun]) -> float:
    """The median device-seconds per image of the runs on as many devices (else of all), scaled to the point."""
    alike = [run for run in history if run.devices == work.devices] or history
    per_image = statistics.median(run.device_seconds_per_image for run in alike)
    return per_image * work.epochs * work.images / 3600


def estimate(works: Sequence[Work], history: dict[Setting, Sequence[PastRun]]) -> list[GroupEstimate]:
    """One estimate per setting, in the order the grid first uses it."""
    by_setting: dict[Setting, list[Work]] = defaultdict(list)
    for work in works:
        by_setting[work.setting].append(work)
    groups = []
    for setting, members in by_setting.items():
        runs = history.get(setting) or []
        device_hours = sum(point_device_hours(work, runs) for work in members) if runs else 0.0
        groups.append(GroupEstimate(setting, len(members), len(runs), device_hours))
    return groups


def hours(value: float) -> str:
    """Two decimals, or two significant digits below 0.1 (a CPU demo's minutes)."""
    return f"{value:,.2f}" if value >= 0.1 else f"{value:.2g}"


def describe(groups: Sequence[GroupEstimate], auto_as_cpu: bool) -> list[str]:
    """The lines a dry run prints: the total per device type, then one line per setting."""
    total = sum(group.points for group in groups)
    known = [group for group in groups if group.runs]
    kinds = dict.fromkeys(group.setting.device_type for group in known)
    amounts = " + ".join(
        f"{hours(sum(g.device_hours for g in known if g.setting.device_type == kind))} {kind}-hours" for kind in kinds
    )
    lines = [
        f"{HEADER}: {amounts} for {sum(g.points for g in known)} of {total} points, from earlier FINISHED runs "
        "of the same model, batch_size, precision and device type (any experiment)"
        if known
        else f"{HEADER}: none, no earlier FINISHED run matches any point"
    ]
    for group in groups:
        if group.runs:
            runs = f"{group.runs} earlier run{'s' if group.runs > 1 else ''}"
            lines.append(
                f"  {group.setting}: {hours(group.device_hours)} {group.setting.device_type}-hours for "
                f"{group.points} points (from {runs}: median time per image, scaled to each point's epochs, "
                "images and devices)"
            )
        else:
            lines.append(f"  no earlier runs of {group.setting}: no estimate for {group.points} of {total} points")
    if auto_as_cpu:
        lines.append("  accelerator=auto is counted as CPU; set accelerator=gpu for a GPU estimate")
    return lines


def search_filter(setting: Setting) -> str:
    return (
        f"params.model = '{setting.model}' and params.batch_size = '{setting.batch_size}' and "
        f"params.precision = '{setting.precision}' and tags.{DEVICE_TYPE} = '{setting.device_type}' and "
        "attributes.status = 'FINISHED'"
    )


def finished_runs(client: mlflow.MlflowClient, experiment_ids: list[str], setting: Setting) -> list[Run]:
    """Every FINISHED run of `setting` in these experiments: one search, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, search_filter(setting), max_results=PAGE_SIZE, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def all_experiments(client: mlflow.MlflowClient) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        ids += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            return ids


def train_split_size(prepared_dir: str) -> int | None:
    """The prepared training split's image count, or None where stats.json cannot be read."""
    try:
        return int(json.loads((Path(prepared_dir) / STATS_FILE).read_text())["images"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_problem(uri: str) -> str | None:
    """Why the store cannot be searched, in words; None when it answers. A SQLite file that does not
    exist yet is not created: a dry run creates nothing."""
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).exists():
        return f"no tracking store at {redact(uri)} yet, so no earlier runs"
    try:
        check_tracking_server(uri)
    except UserError as error:
        return str(error)
    return None


def grid_cost(configs: Sequence[Config], uri: str) -> list[str]:
    """The cost lines for a dry run of these points, logged to `uri`: one line when the store is away."""
    sizes = {folder: train_split_size(folder) for folder in {c.data.prepared_dir for c in configs}}
    unreadable = sorted(folder for folder, size in sizes.items() if size is None)
    if unreadable:
        return [f"{HEADER}: none, {Path(unreadable[0]) / STATS_FILE} is not readable"]
    problem = store_problem(uri)
    if problem:
        return [f"{HEADER}: none, {problem}"]
    works = [work_of(c, sizes[c.data.prepared_dir]) for c in configs]
    split_of: dict[Setting, int] = {}
    for config, work in zip(configs, works):
        split_of.setdefault(work.setting, sizes[config.data.prepared_dir])
    try:
        client = mlflow.MlflowClient(uri)
        experiments = all_experiments(client)
        found = {s: finished_runs(client, experiments, s) if experiments else [] for s in split_of}
    except MlflowException as error:
        reason = redact_text((str(error.message).strip().splitlines() or ["no reason given"])[0])
        return [f"{HEADER}: none, the tracking store {redact(uri)} could not be searched ({reason})"]
    history = {setting: known_runs(runs, split_of[setting]) for setting, runs in found.items()}
    auto_as_cpu = any(c.train.accelerator == "auto" and w.setting.device_type == "CPU" for c, w in zip(configs, works))
    return describe(estimate(works, history), auto_as_cpu)


def known_runs(runs: Iterable[Run], train_split: int) -> list[PastRun]:
    found = (past_run(run.data.params, run.data.metrics.get("total_time_s"), train_split) for run in runs)
    return [run for run in found if run is not None]

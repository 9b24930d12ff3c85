"""The runs of a study read back from MLflow, as the records every other part of the report works on.

Everything the report says comes from MLflow runs: params (the config keys, as logged), statuses
and metrics. This module is the one place that talks to the tracking server for it: it finds an
experiment's or a grid's runs, keeps the newest run of each configuration hash, and turns each
into a `RunRecord` whose params are spelled one way and whose histories are per epoch. A
`Configuration` groups the records of one set-up, seeds and failed attempts together.
"""

from __future__ import annotations

import dataclasses
import itertools

import mlflow

from hpcsweep.config import TrainConfig
from hpcsweep.errors import UserError
from hpcsweep.grid import runs as grid_runs
from hpcsweep.tracking.credentials import redact

# A configuration is what a run computes apart from its seed: the config keys, as `logged_params`
# logs them. Autologging adds params of its own (optimizer_name, betas, ...) that a run which died
# early lacks; grouping on them would split a failed seed from its finished siblings.
CONFIG_KEYS = [field.name for field in dataclasses.fields(TrainConfig)] + ["loader"]
IDENTITY = [key for key in CONFIG_KEYS if key != "seed"]
HISTORIES = ("val/acc", "epoch_time_s", "train/loss", "train/images_per_s", "train/mfu")
FINISHED = "FINISHED"
ACCURACY = "val/acc"


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
        raise UserError(f"no experiment named {name!r} in {redact(client.tracking_uri)}; experiments there: {known}")
    runs = grid_runs.search_newest_first(client, [found.experiment_id])
    training = [run for run in runs if role(run) != "launch"]
    if not training:
        where = redact(client.tracking_uri)
        raise UserError(f"experiment {name!r} in {where} has no runs: train or launch a grid first")
    launches = [run for run in runs if role(run) == "launch"]
    return training, launches[0].info.run_id if launches else None


def runs_of_grid(client: mlflow.MlflowClient, name: str) -> tuple[list, str | None]:
    runs = grid_runs.grid_runs(client, name)
    if not runs:
        raise UserError(f"no grid named {name!r} in {redact(client.tracking_uri)}: no runs carry tag grid={name}")
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

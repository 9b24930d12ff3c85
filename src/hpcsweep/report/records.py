"""The runs of a study read back from MLflow, as the records every other part of the report works on.

Everything the report says comes from MLflow runs: params (the config keys, as logged), statuses,
tags and metrics. This module and `histories` (which reads the metric histories of many runs at
once) are the one place that talks to the tracking server for it: it finds an experiment's or a
grid's runs, keeps the newest run of each configuration hash, and turns each into a `RunRecord`
whose params are spelled one way, whose histories are per epoch and which knows
the tags the report reads (tuned keys, the epoch early stopping pruned it at, the device type). A
`Configuration` groups the records of one set-up, seeds and failed attempts together.
"""

from __future__ import annotations

import dataclasses
import itertools

import mlflow

from hpcsweep.config import TrainConfig
from hpcsweep.errors import UserError
from hpcsweep.grid import run_reading
from hpcsweep.grid import runs as grid_runs
from hpcsweep.report.histories import Histories, epoch_histories
from hpcsweep.tracking.credentials import redact

# A configuration is what a run computes apart from its seed: the config keys, as `logged_params`
# logs them. Autologging adds params of its own (optimizer_name, betas, ...) that a run which died
# early lacks; grouping on them would split a failed seed from its finished siblings.
# `val_size` (a data key) is one too: val/acc on a held-out split and on the test split differ.
CONFIG_KEYS = [field.name for field in dataclasses.fields(TrainConfig)] + ["loader", "val_size"]
IDENTITY = [key for key in CONFIG_KEYS if key != "seed"]
ACCURACY = "val/acc"  # every choice the report makes reads this (the held-out split) ...
TEST_ACCURACY = "test/acc"  # ... and this is only reported, never chosen by
HISTORIES = (ACCURACY, TEST_ACCURACY, "epoch_time_s", "train/loss", "train/images_per_s", "train/mfu")
FINISHED = "FINISHED"
KILLED = "KILLED"
TUNED_TAG = "hpcsweep.tuned"  # the config keys a grid tuned per configuration, joined by ","
PRUNED_TAG = "hpcsweep.pruned_at_epoch"  # 1-based epoch at which early stopping ended a KILLED run
DEVICE_TYPE_TAG = "device_type"  # "GPU" or "CPU"
TAGS = (TUNED_TAG, PRUNED_TAG, DEVICE_TYPE_TAG)
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as the report needs it; histories are per epoch, in epoch order, for finished and
    pruned runs."""

    run_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[float]]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # only the TAGS the report reads

    @property
    def gpus(self) -> int:
        """Devices the run held (devices x num_nodes): GPUs, or CPU processes on a CPU."""
        return int(self.params.get("devices", 1)) * int(self.params.get("num_nodes", 1))

    @property
    def tuned(self) -> tuple[str, ...]:
        """The config keys its grid tuned per configuration; empty for a run that tuned nothing."""
        return tuple(key.strip() for key in self.tags.get(TUNED_TAG, "").split(",") if key.strip())

    @property
    def pruned_at_epoch(self) -> int | None:
        """The epoch early stopping ended it at; None for a run that was not pruned."""
        epoch = self.tags.get(PRUNED_TAG)
        return int(float(epoch)) if self.status == KILLED and epoch else None

    @property
    def device_type(self) -> str | None:
        """ "GPU" or "CPU": its tag, or, for a run older than the tag, what `accelerator` names."""
        tagged = self.tags.get(DEVICE_TYPE_TAG, "").upper()
        if tagged in ("GPU", "CPU"):
            return tagged
        accelerator = self.params.get("accelerator", "").lower()
        return "GPU" if accelerator in GPU_ACCELERATORS else "CPU" if accelerator == "cpu" else None

    @property
    def held_out(self) -> bool:
        """Whether val/* was measured on a held-out validation split (False: on the test split)."""
        return self.params.get("val_size", "0") not in ("0", "")

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

    @property
    def pruned(self) -> list[RunRecord]:
        return [run for run in self.runs if run.pruned_at_epoch is not None]

    @property
    def tuned(self) -> tuple[str, ...]:
        """The config keys its runs' grid tuned, in IDENTITY order (keys that are none are ignored)."""
        keys = {key for run in self.runs for key in run.tuned}
        return tuple(name for name in IDENTITY if name in keys)


def normalised(value: str) -> str:
    """One spelling per number: `mlflow run -P lr=1e-3` logs what the launcher logs as 0.001, and
    `-P lr=1` what it logs as 1.0; whole numbers lose their `.0`, others keep Python's shortest form."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else repr(number)


def trained(run) -> bool:
    """Whether the report reads its histories: finished runs enter means and curves, pruned ones
    only the device-hours saved."""
    status = run.info.status
    return status == FINISHED or (status == KILLED and PRUNED_TAG in run.data.tags)


def record_of(run, histories: Histories) -> RunRecord:
    """`run` as a record; `histories` holds the per-epoch histories of every `trained` run."""
    tags = {key: value for key, value in run.data.tags.items() if key in TAGS}
    history = histories[run.info.run_id] if trained(run) else {}
    params = {key: normalised(value) for key, value in run.data.params.items() if key in CONFIG_KEYS}
    return RunRecord(run.info.run_id, run.info.status, params, dict(run.data.metrics), history, tags)


def role(run) -> str | None:
    return run.data.tags.get(run_reading.ROLE)


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
        client, experiments, f"tags.grid = '{name}' and tags.`{run_reading.ROLE}` = 'launch'"
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
    newest = [run for run in run_reading.latest_by_hash(runs).values() if run.data.params]
    histories = epoch_histories(client, [run.info.run_id for run in newest if trained(run)], HISTORIES)
    return [record_of(run, histories) for run in newest], launch

"""One training's MLflow run, from opening to closing, in one context manager: `TrackedRun`.

- Only global rank 0 talks to MLflow (other ranks would each open a run of their own, because
  autologging starts one whenever none is active).
- The run to log into is, in order: the run id a launcher created and handed over (`mlflow run`
  and the grid launcher do), the run id saved in the run folder by an interrupted attempt (a
  resumed training continues its run), or a new run in the configured experiment.
- Params are the config keys under their own names; tags say which code, data, config and
  SLURM job produced the run (`tags.py`); the experiment kind, source, dataset input and the
  run's address printed on stderr are what the MLflow UI shows (`ui_metadata.py`).
- Autologging (`mlflow.pytorch.autolog`) logs every epoch's metrics; checkpoints are logged as
  artifacts at the end, by us, because Lightning already writes them; a finished training's best
  checkpoint is also logged as an MLflow model, once its spool was sent (`model_logging.py`).
- Against a tracking server, every write goes through the run's spool (`store.py`), so a
  server that is briefly away costs nothing; `hpcsweep sync` sends what a training left.
- The first process of each node reports its CPU, memory and GPU use when
  `tracking.system_metrics` is on, or MLflow's own switch (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING,
  `mlflow.enable_system_metrics_logging()`). That monitor is ours, one per node; MLflow's own
  (`start_run(log_system_metrics=...)`) stays off so that none is counted twice.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from mlflow.entities import LifecycleStage, Run
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from hpcsweep.config import Config
from hpcsweep.errors import UserError
from hpcsweep.ranks import global_rank, local_rank
from hpcsweep.tracking import store
from hpcsweep.tracking.client import SPOOL_PREFIX, tracking_uri
from hpcsweep.tracking.credentials import redact, redact_values, s3_keys_problem
from hpcsweep.tracking.experiments import experiment_id
from hpcsweep.tracking.model_logging import log_best_model
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.tracking.tag_names import FAILURE_REASON
from hpcsweep.tracking.tags import logged_params, run_tags
from hpcsweep.tracking.ui_metadata import (
    DATASET_CONTEXT,
    ensure_experiment_kind,
    missing_tags,
    prepared_dataset,
    run_address,
    source_tags,
)

CONFIG_ARTIFACT = "config.json"
SOURCE_NAME = "hpcsweep"


class TrackedRun:
    """`with TrackedRun(config, folder, run_id) as run:` opens or joins the run (rank 0), spools its
    writes and monitors the node; leaving the block logs `run.final_metrics` and the folder's
    checkpoints and closes the run with `run.status` (FAILED unless the block set another:
    FINISHED, KILLED, or SCHEDULED when a requeued job will resume it). A FINISHED run's best
    checkpoint becomes its MLflow model when the trainer says how to build the network from a
    checkpoint (`run.network_from_checkpoint`) and `tracking.log_model` is on."""

    def __init__(self, config: Config, folder: RunFolder, run_id: str | None = None, params: dict | None = None):
        self.config, self.folder = config, folder
        self.params = {**logged_params(config), **(params or {})}  # the config's, and what this attempt resolved
        self.id = run_id
        self.status = "FAILED"
        self.stopped_early = False  # KILLED on purpose, for good (stop_early): nothing resumes it
        self.final_metrics: dict[str, float] = {}
        # the step the final figures are logged at: the epochs trained, so that a later attempt's
        # figures supersede an earlier one's (MLflow shows a metric's value at its highest step)
        self.final_step = 0
        self.is_logging = global_rank() == 0
        self.server_uri = tracking_uri(config)  # the store itself
        self.log_uri = self.server_uri  # where this process's MLflow calls go (spool+... while spooling)
        self.network_from_checkpoint: Callable[[Path], torch.nn.Module] | None = None
        self._exit_stack = contextlib.ExitStack()

    def __enter__(self) -> TrackedRun:
        with self._exit_stack as stack:
            if self.is_logging:
                stack.callback(self._log_model)  # last: once the spool was sent and the run closed
                self.log_uri = stack.enter_context(
                    store.spooled_writes(self.server_uri, self.folder.path, self.config.tracking.flush_timeout_s)
                )
                mlflow.set_tracking_uri(self.log_uri)
                stack.callback(mlflow.set_tracking_uri, self.server_uri)
                self.id = self._open()
                stack.callback(self._close)
            monitor = self._node_monitor()
            if monitor:
                stack.callback(monitor.finish)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._exit_stack.close()

    def stop_early(self, tags: dict[str, str]) -> None:
        """The training was stopped on purpose before its last epoch (a pruned grid point): the run
        ends KILLED with `tags` saying why, and is over: no model is logged, nothing resumes it."""
        self.status, self.stopped_early = "KILLED", True
        if self.is_logging:
            mlflow.set_tags(tags)

    def give_up(self, reason: str) -> None:
        """End the run FAILED with `reason` as its tag, and stop this process with `reason` as its error."""
        self.status = "FAILED"
        if self.is_logging:
            mlflow.set_tag(FAILURE_REASON, reason)
        raise UserError(reason)

    def _open(self) -> str:
        """Open (or reopen) the run, log params, tags and the dataset, switch autologging on."""
        run_id = self.id or self.folder.resumable_run_id()
        if run_id:
            run = reopened(run_id, self.server_uri, None if self.id else self.folder.path)
        else:
            experiment = experiment_id(mlflow.MlflowClient(), self.config.tracking.experiment)
            run = mlflow.start_run(experiment_id=experiment, log_system_metrics=False)
        problem = s3_keys_problem(run.info.artifact_uri.removeprefix(SPOOL_PREFIX))  # the spool renames it
        if problem:
            mlflow.set_tag(FAILURE_REASON, problem)
            mlflow.end_run("FAILED")
            raise UserError(problem)
        # written straight to the server, not spooled: it must answer while a run opens anyway
        ensure_experiment_kind(mlflow.MlflowClient(), run.info.experiment_id)
        log_missing_params(run.info.run_id, self.params)
        tags = run_tags(self.config)
        # a run someone else created without saying what made it (MLflow's own runs, `mlflow run`'s and
        # the grid launcher's say it already)
        mlflow.set_tags({**missing_tags(run, source_tags(SOURCE_NAME, "LOCAL")), **tags})
        mlflow.log_input(prepared_dataset(self.config.data.prepared_dir, tags["data_md5"]), context=DATASET_CONTEXT)
        # the whole config, paths and all (passwords in URIs redacted: every reader of the
        # experiment sees it), for whoever reproduces the run. Uploaded now, not at the
        # end: MLflow builds a run's artifact repository at its first upload, from a get_run that
        # would wait out minutes of retries if the server were away by then; built now, while the
        # server must answer anyway, it is kept for the run's later uploads (spooled ones, for a
        # spool+ URI)
        mlflow.log_dict(redact_values(self.config.to_dict()), CONFIG_ARTIFACT)
        mlflow.pytorch.autolog(log_models=False, checkpoint=False, log_datasets=False, silent=True)
        self.folder.write_state(run_id=run.info.run_id, finished=False)
        print(run_address(self.server_uri, run), file=sys.stderr, flush=True)
        return run.info.run_id

    def _node_monitor(self) -> SystemMetricsMonitor | None:
        """CPU, memory and (where pynvml finds one) GPU use of this node, logged into the run.

        One monitor per node, on its first local rank; with several nodes each reports under its
        host name. Nodes other than rank 0's know the run only when a launcher handed its id over.
        """
        if not system_metrics_on(self.config) or local_rank() != 0 or not self.id:
            return None
        node_id = socket.gethostname() if self.config.train.num_nodes > 1 else None
        monitor = SystemMetricsMonitor(self.id, node_id=node_id, tracking_uri=self.log_uri)
        monitor.start()
        return monitor

    def _close(self) -> None:
        """Log the final figures and checkpoints, end the run with its status."""
        mlflow.log_metrics(self.final_metrics, step=self.final_step)
        for path in self.folder.checkpoints():
            mlflow.log_artifact(str(path), artifact_path="checkpoints")
        mlflow.end_run(self.status)
        self.folder.write_state(finished=self.status == "FINISHED" or self.stopped_early)

    def _log_model(self) -> None:
        if self.status == "FINISHED" and self.config.tracking.log_model and self.network_from_checkpoint:
            log_best_model(
                self.server_uri, self.id, self.folder.best_checkpoint, self.network_from_checkpoint, self.final_step
            )


def reopened(run_id: str, store_uri: str, folder: Path | None) -> Run:
    """`mlflow.start_run(run_id)` for a run handed over by a launcher, or named by the `folder` of an
    interrupted training; one line where the store lacks it or holds it deleted (a folder trained
    again after MLFLOW_TRACKING_URI changed), not MLflow's traceback."""
    try:
        lifecycle = mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        lifecycle = None
    if lifecycle in (None, LifecycleStage.DELETED):
        held = "does not hold it (made against another store?)" if lifecycle is None else "holds it deleted"
        if folder is None:
            raise UserError(f"cannot log into run {run_id}: {redact(store_uri)} {held}")
        raise UserError(
            f"cannot resume run {run_id} of the unfinished training in {folder}: {redact(store_uri)} {held}; "
            f"train against the store that holds it, or remove {folder} to train afresh"
        )
    return mlflow.start_run(run_id=run_id, log_system_metrics=False)


def system_metrics_on(config: Config) -> bool:
    """`tracking.system_metrics`, or MLflow's own switch (its environment variable, which
    `mlflow.enable_system_metrics_logging()` sets too)."""
    return config.tracking.system_metrics or MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get()


def log_missing_params(run_id: str, params: dict[str, object]) -> None:
    """Log the params the run does not have yet.

    A run created by `mlflow run` or by the grid launcher already holds them (perhaps spelled
    `1e-3` where we would write `0.001`), and a resumed run holds them from its first attempt;
    MLflow refuses to change a param, so only the missing ones are logged.
    """
    existing = mlflow.get_run(run_id).data.params
    missing = {key: value for key, value in params.items() if key not in existing}
    if missing:
        mlflow.log_params(missing)

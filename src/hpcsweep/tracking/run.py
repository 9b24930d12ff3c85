"""One training's MLflow run, from opening to closing, in one context manager: `TrackedRun`.

- Only global rank 0 talks to MLflow (other ranks would each open a run of their own, because
  autologging starts one whenever none is active).
- The run to log into is, in order: the run id a launcher created and handed over (`mlflow run`
  and the grid launcher do), the run id saved in the run folder by an interrupted attempt (a
  resumed training continues its run), or a new run in the configured experiment.
- Params are the config keys under their own names; tags say which code, data, config and
  SLURM job produced the run (`tags.py`).
- Autologging (`mlflow.pytorch.autolog`) logs every epoch's metrics; checkpoints are logged as
  artifacts at the end, by us, because Lightning already writes them.
- Against a tracking server, every write goes through the run's spool (`store.py`), so a
  server that is briefly away costs nothing; `hpcsweep sync` sends what a training left.
- The first process of each node reports its CPU, memory and GPU use when
  `tracking.system_metrics` is on.
"""

from __future__ import annotations

import contextlib
import socket

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from hpcsweep.config import Config
from hpcsweep.errors import UserError
from hpcsweep.ranks import global_rank, local_rank
from hpcsweep.tracking import store
from hpcsweep.tracking.client import tracking_uri
from hpcsweep.tracking.credentials import redact_values
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.tracking.tags import FAILURE_REASON, logged_params, run_tags

CONFIG_ARTIFACT = "config.json"


class TrackedRun:
    """`with TrackedRun(config, folder, run_id) as run:` opens or joins the run (rank 0), spools its
    writes and monitors the node; leaving the block logs `run.final_metrics` and the folder's
    checkpoints and closes the run with `run.status` (FAILED unless the block set another:
    FINISHED, KILLED, or SCHEDULED when a requeued job will resume it)."""

    def __init__(self, config: Config, folder: RunFolder, run_id: str | None = None, params: dict | None = None):
        self.config, self.folder = config, folder
        self.params = {**logged_params(config), **(params or {})}  # the config's, and what this attempt resolved
        self.id = run_id
        self.status = "FAILED"
        self.final_metrics: dict[str, float] = {}
        # the step the final figures are logged at: the epochs trained, so that a later attempt's
        # figures supersede an earlier one's (MLflow shows a metric's value at its highest step)
        self.final_step = 0
        self.is_logging = global_rank() == 0
        self.log_uri = tracking_uri(config)  # where this process's MLflow calls go (spool+... while spooling)
        self._exit_stack = contextlib.ExitStack()

    def __enter__(self) -> TrackedRun:
        with self._exit_stack as stack:
            if self.is_logging:
                server_uri = self.log_uri
                self.log_uri = stack.enter_context(
                    store.spooled_writes(server_uri, self.folder.path, self.config.tracking.flush_timeout_s)
                )
                mlflow.set_tracking_uri(self.log_uri)
                stack.callback(mlflow.set_tracking_uri, server_uri)
                self.id = self._open()
                stack.callback(self._close)
            monitor = self._node_monitor()
            if monitor:
                stack.callback(monitor.finish)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._exit_stack.close()

    def give_up(self, reason: str) -> None:
        """End the run FAILED with `reason` as its tag, and stop this process with `reason` as its error."""
        self.status = "FAILED"
        if self.is_logging:
            mlflow.set_tag(FAILURE_REASON, reason)
        raise UserError(reason)

    def _open(self) -> str:
        """Open (or reopen) the run, log params and tags, switch autologging on."""
        run_id = self.id or self.folder.resumable_run_id()
        if run_id:
            run = mlflow.start_run(run_id=run_id, log_system_metrics=False)
        else:
            experiment = mlflow.set_experiment(self.config.tracking.experiment)
            run = mlflow.start_run(experiment_id=experiment.experiment_id, log_system_metrics=False)
        log_missing_params(run.info.run_id, self.params)
        mlflow.set_tags(run_tags(self.config))
        # the whole config, paths and all (passwords in URIs redacted: every reader of the
        # experiment sees it), for whoever reproduces the run. Uploaded now, not at the
        # end: MLflow builds a run's artifact repository at its first upload, from a get_run that
        # would wait out minutes of retries if the server were away by then; built now, while the
        # server must answer anyway, it is kept for the run's later uploads (spooled ones, for a
        # spool+ URI)
        mlflow.log_dict(redact_values(self.config.to_dict()), CONFIG_ARTIFACT)
        mlflow.pytorch.autolog(log_models=False, checkpoint=False, log_datasets=False, silent=True)
        self.folder.write_state(run_id=run.info.run_id, finished=False)
        return run.info.run_id

    def _node_monitor(self) -> SystemMetricsMonitor | None:
        """CPU, memory and (where pynvml finds one) GPU use of this node, logged into the run.

        One monitor per node, on its first local rank; with several nodes each reports under its
        host name. Nodes other than rank 0's know the run only when a launcher handed its id over.
        """
        if not self.config.tracking.system_metrics or local_rank() != 0 or not self.id:
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
        self.folder.write_state(finished=self.status == "FINISHED")


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

"""MLflow for training: one run per training, whatever the number of ranks or restarts.

- Only global rank 0 talks to MLflow (other ranks would each open a run of their own, because
  autologging starts one whenever none is active).
- The run to log into is, in order: `MLFLOW_RUN_ID` (a launcher created it), the run id saved
  in the checkpoint folder by an interrupted attempt (a resumed training continues its run),
  or a new run in the configured experiment.
- Params are the config keys under their own names; tags say which code, data, config and
  SLURM job produced the run.
- Autologging (`mlflow.pytorch.autolog`) logs every epoch's metrics; checkpoints are logged as
  artifacts at the end, by us, because Lightning already writes them.
- Against a tracking server, every write goes through the run's spool (`spool_store`), so a
  server that is briefly away costs nothing; `hpcsweep sync` sends what a training left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from hpcsweep.atomic import atomic_file
from hpcsweep.config import Config
from hpcsweep.tracking import store as spool_store

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_STATE = "run.json"
# an array task is named ARRAYJOB_TASK by every SLURM command: slurm_job_id is the array's id
# (as the launcher tags it), not the task's own SLURM_JOB_ID
SLURM_TAGS = {"slurm_job_id": ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"), "slurm_array_task_id": ("SLURM_ARRAY_TASK_ID",)}


def tracking_uri(config: Config) -> str:
    return config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def global_rank() -> int:
    """This process's rank, from what the launcher (torchrun, srun, Lightning) put in the environment."""
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable])
    return int(os.environ.get("LOCAL_RANK", 0))


def logged_params(config: Config) -> dict[str, object]:
    """The train keys under their own names, plus the loader, as MLflow params."""
    return {**dataclasses.asdict(config.train), "loader": config.data.loader}


def git_commit() -> str:
    """The checked-out commit, with `-dirty` when the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_md5(prepared_dir: Path) -> str:
    """One md5 over the prepared files, so runs on different data versions are told apart."""
    digest = hashlib.md5()
    for path in sorted(Path(prepared_dir).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.md5(path.read_bytes()).digest())
    return digest.hexdigest()


def read_run_state(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_state(run_dir: Path, **state) -> None:
    merged = {**read_run_state(run_dir), **state}
    with atomic_file(Path(run_dir) / RUN_STATE) as temporary:
        temporary.write_text(json.dumps(merged))


def resumable_run_id(run_dir: Path) -> str | None:
    """The run of an interrupted attempt in this checkpoint folder, if it did not finish."""
    state = read_run_state(run_dir)
    return state.get("run_id") if not state.get("finished") else None


def start_run(config: Config, run_dir: Path) -> str:
    """Open (or reopen) the run on rank 0, log params and tags, switch autologging on."""
    mlflow.set_tracking_uri(tracking_uri(config))
    run_id = os.environ.get("MLFLOW_RUN_ID") or resumable_run_id(run_dir)
    if run_id:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=False)
    else:
        experiment = mlflow.set_experiment(config.tracking.experiment)
        run = mlflow.start_run(experiment_id=experiment.experiment_id, log_system_metrics=False)
    log_missing_params(run.info.run_id, logged_params(config))
    mlflow.set_tags(run_tags(config))
    mlflow.pytorch.autolog(log_models=False, checkpoint=False, log_datasets=False, silent=True)
    write_run_state(run_dir, run_id=run.info.run_id, finished=False)
    return run.info.run_id


def node_monitor(config: Config, run_id: str | None) -> SystemMetricsMonitor | None:
    """CPU, memory and (where pynvml finds one) GPU use of this node, logged into the run.

    One monitor per node, on its first local rank; with several nodes each reports under its
    host name. Nodes other than rank 0's only know the run through MLFLOW_RUN_ID (a launcher).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    if not config.tracking.system_metrics or local_rank != 0 or not run_id:
        return None
    node_id = socket.gethostname() if config.train.num_nodes > 1 else None
    monitor = SystemMetricsMonitor(run_id, node_id=node_id, tracking_uri=tracking_uri(config))
    monitor.start()
    return monitor


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


def run_tags(config: Config) -> dict[str, str]:
    tags = {
        "config_hash": config.hash,
        "git_commit": git_commit(),
        "data_md5": data_md5(Path(config.data.prepared_dir)),
        "host": socket.gethostname(),
    }
    for tag, variables in SLURM_TAGS.items():
        value = next((os.environ[v] for v in variables if v in os.environ), None)
        if value is not None:
            tags[tag] = value
    return tags


def spooled_writes(config: Config, run_dir: Path):
    """The training's writes to a tracking server go through the spool in `run_dir` (a context)."""
    return spool_store.spooled_writes(tracking_uri(config), run_dir, config.tracking.flush_timeout_s)


def finish_run(run_dir: Path, status: str, metrics: dict[str, float], artifacts: list[Path]) -> None:
    """Log the final figures and checkpoints, close the run with `status` (FINISHED, FAILED, KILLED, or
    SCHEDULED when a requeued job will resume it)."""
    mlflow.log_metrics(metrics)
    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path="checkpoints")
    mlflow.end_run(status)
    write_run_state(run_dir, finished=status == "FINISHED")

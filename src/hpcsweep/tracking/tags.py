"""What a run is labelled with: its params (the config keys) and the tags that say what produced it.

Params are the config keys under their own names, so a grid axis, a `-s` override, an MLflow
param and a report column are one word. Tags name the code, data, config and SLURM job behind
a run, so two runs that differ in any of them are told apart, and the device it trained on
(`device_type`, `device_name`), so its times are compared, and device-hours named, for that device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import socket
import subprocess
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

from hpcsweep.config import Config
from hpcsweep.hardware.gpus import gpu_of_rank, trains_on_cuda, visible_gpus
from hpcsweep.ranks import local_rank
from hpcsweep.tracking.credentials import redact

# the param that says which precision `precision: auto` (or an explicit one) trained in
PRECISION_USED = "precision_used"
# what a run trained on: "GPU" or "CPU", and the device's model as the system names it
DEVICE_TYPE = "device_type"
DEVICE_NAME = "device_name"
CPU_INFO = Path("/proc/cpuinfo")

# an array task is named ARRAYJOB_TASK by every SLURM command: slurm_job_id is the array's id
# (as the launcher tags it), not the task's own SLURM_JOB_ID
SLURM_TAGS = {"slurm_job_id": ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"), "slurm_array_task_id": ("SLURM_ARRAY_TASK_ID",)}


def logged_params(config: Config) -> dict[str, object]:
    """The train keys under their own names, plus the loader and the validation split's size, as MLflow params."""
    return {**dataclasses.asdict(config.train), "loader": config.data.loader, "val_size": config.data.val_size}


def git(*args: str) -> str | None:
    """What `git ARGS` prints in the working folder; None outside a work tree or without git."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit() -> str:
    """The checked-out commit, with `-dirty` when the work tree differs from it."""
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def git_source_tags() -> dict[str, str]:
    """MLflow's own tags for the code's commit, branch and repository, where git knows them: the UI
    shows the commit as the run's Version. The commit is bare, as MLflow writes it (`git_commit`
    says whether the work tree differed); a detached HEAD has no branch; the remote's URL is
    redacted, since a token in it would be shown to every reader of the experiment."""
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    remote = git("config", "--get", "remote.origin.url")
    tags = {MLFLOW_GIT_COMMIT: commit, MLFLOW_GIT_BRANCH: branch if branch != "HEAD" else None}
    tags[MLFLOW_GIT_REPO_URL] = redact(remote) if remote else None
    return {key: value for key, value in tags.items() if value}


def data_md5(prepared_dir: Path) -> str:
    """One md5 over the prepared files, so runs on different data versions are told apart."""
    digest = hashlib.md5()
    for path in sorted(Path(prepared_dir).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.md5(path.read_bytes()).digest())
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model: Linux's "model name", else what Python's platform knows; never empty."""
    try:
        lines = CPU_INFO.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    names = (line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    return next((name for name in names if name), None) or platform.processor() or platform.machine() or "unknown CPU"


def device_tags(accelerator: str) -> dict[str, str]:
    """What this process trains on: the GPU of its local rank when the training runs on CUDA, else the CPU."""
    if trains_on_cuda(accelerator):
        return {DEVICE_TYPE: "GPU", DEVICE_NAME: gpu_of_rank(visible_gpus(), local_rank()).name}
    return {DEVICE_TYPE: "CPU", DEVICE_NAME: cpu_model()}


def run_tags(config: Config) -> dict[str, str]:
    tags = {
        "config_hash": config.hash,
        "git_commit": git_commit(),
        **git_source_tags(),
        "data_md5": data_md5(Path(config.data.prepared_dir)),
        "host": socket.gethostname(),
        **device_tags(config.train.accelerator),
    }
    for tag, variables in SLURM_TAGS.items():
        value = next((os.environ[v] for v in variables if v in os.environ), None)
        if value is not None:
            tags[tag] = value
    return tags

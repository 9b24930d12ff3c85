"""Running hpcsweep as a user does, a subprocess with the tracking URI in its environment, and
reading back the MLflow runs it made; with the smallest training settings that still train.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

QUICK = ["max_epochs=1", "warmup_epochs=0", "batch_size=60", "base_batch_size=60", "accelerator=cpu"]
TINY = {"max_epochs": 1, "warmup_epochs": 0, "batch_size": 60, "base_batch_size": 60, "accelerator": "cpu"}


def overrides(*assignments: str) -> list[str]:
    return [arg for assignment in assignments for arg in ("-s", assignment)]


def environment(uri: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "SLURM_"))}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", **extra}


def hpcsweep(args: list[str], cwd: Path, uri: str, **popen) -> subprocess.CompletedProcess:
    """The CLI in a subprocess logging to `uri` (pass env= for more than `environment(uri)`)."""
    popen.setdefault("env", environment(uri))
    return subprocess.run([sys.executable, "-m", "hpcsweep", *args], cwd=cwd, capture_output=True, text=True, **popen)


def write_grid(folder: Path, spec: dict, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def grid_command(grid: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpcsweep", "grid", str(grid), *extra]


def runs_of(uri: str, experiment: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def point_runs(uri: str, grid_name: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.grid = '{grid_name}'")


def history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run_id, metric)]

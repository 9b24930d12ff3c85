"""Launching grids on the development SLURM cluster and waiting for them, for the cluster tests.

The cluster itself is the `slurm_cluster` fixture (conftest.py); these helpers run the CLI with
its exports, and tell when a grid's jobs have all left the queue.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from helpers.runs import environment, grid_command, point_runs


def environment_with_slurm(uri: str) -> dict[str, str]:
    keep = ("SLURM_CONF", "HPCSWEEP_SLURM_JOBCOMP", "HPCSWEEP_SLURM_DIR", "HPCSWEEP_MASTER_ADDR")
    return {**environment(uri), **{key: os.environ[key] for key in keep if key in os.environ}}


def launch_on_cluster(grid: Path, project: Path, uri: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        grid_command(grid, "--executor", "slurm", *options),
        cwd=project,
        env=environment_with_slurm(uri),
        capture_output=True,
        text=True,
    )


def children(uri: str, name: str) -> list:
    return [r for r in point_runs(uri, name) if r.data.tags["hpcsweep.role"] == "point"]


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def settled(uri: str, name: str, count: int) -> bool:
    """All `count` runs exist and none of their jobs is left in the queue.

    The queue, not the runs, is the signal: a run ends a moment before its job does (the job still
    tears down), and a job that died before training never ends its run at all.
    """
    runs = children(uri, name)
    jobs = sorted({r.data.tags["slurm_job_id"] for r in runs if "slurm_job_id" in r.data.tags})
    if len(runs) < count or not jobs:
        return False
    queue = subprocess.run(
        ["squeue", "-h", "-j", ",".join(jobs)], capture_output=True, text=True, env=environment_with_slurm(uri)
    )
    return not queue.stdout.strip()

"""A relaunch first finishes what an interrupted launch left undone: the runs of its queued tasks.

A launch submits its job arrays, then creates the points' runs while the jobs wait (child_runs.py).
A launcher that dies in between (a lost SSH session, a kill) leaves tasks in the queue without
runs: `status` and the MLflow UI do not show them until each task starts and makes its own, and a
relaunch, which decides from the runs, would submit those points a second time. So each array's
job id and task logs are recorded beside its points file as soon as sbatch answers
(`job-ids/points-B.json`), and a relaunch, before it decides what to run, makes the missing runs
of every earlier launch's tasks that are still queued or running, through run_ids' claim: a task
that starts meanwhile and the relaunch never make two. Those points are not submitted again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow

from hpcsweep.atomic import atomic_file
from hpcsweep.config import Config, config_from_dict
from hpcsweep.grid import run_ids
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors.base import Executor

FOLDER = "job-ids"  # in a launch folder, beside the points files


@dataclass(frozen=True)
class QueuedTask:
    points_file: Path
    task: int
    job_id: str
    log: str

    @property
    def key(self) -> str:
        """The task as SLURM names it (run_reading.job_key's form)."""
        return f"{self.job_id}_{self.task}"


def record(points_file: Path, job_id: str, logs: list[Path]) -> None:
    """The array `points_file`'s points were submitted as, and where each task logs."""
    (points_file.parent / FOLDER).mkdir(exist_ok=True)
    with atomic_file(points_file.parent / FOLDER / points_file.name) as temporary:
        temporary.write_text(json.dumps({"job_id": job_id, "logs": [str(log) for log in logs]}))


def without_runs(grid_folder: Path) -> list[QueuedTask]:
    """Every task of the grid's launches (runs/GRID/*) that was submitted but has no run yet."""
    tasks = []
    for record_file in sorted(grid_folder.glob(f"*/{FOLDER}/*.json")):
        points_file = record_file.parent.parent / record_file.name
        queued = json.loads(record_file.read_text())
        for task, log in enumerate(queued["logs"]):
            if not run_ids.recorded(points_file, task):
                tasks.append(QueuedTask(points_file, task, queued["job_id"], log))
    return tasks


def make_run(client: mlflow.MlflowClient, queued: QueuedTask, document: dict, config: Config) -> str | None:
    """The task's run, SCHEDULED and tagged with its job as its launcher would have made it; None
    where another process holds the claim. A claim abandoned by a dead launcher is taken over."""
    lineage = grid_runs.Lineage.from_dict(document["lineage"])
    tags = grid_runs.job_tags(queued.job_id, queued.task, queued.log)
    label = document["points"][queued.task]["label"]

    def create() -> str:
        return grid_runs.create_child(client, lineage, label, config, tags, scheduled=True)

    if run_ids.abandoned(queued.points_file, queued.task):
        run_ids.release(queued.points_file, queued.task)
    return run_ids.create_once(queued.points_file, queued.task, create)


def complete(client: mlflow.MlflowClient, grid_folder: Path, executor: Executor) -> set[str]:
    """Make the runs of earlier launches' tasks that are still queued or running and have none;
    returns the config hashes of those tasks' points: they are in the queue, not to be submitted again."""
    tasks = without_runs(grid_folder)
    alive = executor.live_jobs([queued.key for queued in tasks]) if tasks else set()
    documents: dict[Path, dict] = {}
    hashes, made = set(), 0
    for queued in (queued for queued in tasks if queued.key in alive):
        document = documents.setdefault(queued.points_file, json.loads(queued.points_file.read_text()))
        raw = document["points"][queued.task]["config"]
        config = config_from_dict(raw, source=f"{queued.points_file}[{queued.task}]")
        made += make_run(client, queued, document, config) is not None
        hashes.add(config.hash)
    if made:
        print(f"{grid_folder.name}: {made} runs created for tasks an earlier launch queued without them", flush=True)
    return hashes

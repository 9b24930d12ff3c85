"""Each point gets exactly one run, made by the launcher or by the task that starts first.

A launch queues its job arrays before it creates the child runs (child_runs.py), so a task can
start before its run exists; the claim beside the points file (run_ids.py) decides who makes it.
These tests race real processes for one claim and let a task come first against a real server.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mlflow
import pytest

from helpers.runs import TINY, write_grid
from hpcsweep.errors import UserError
from hpcsweep.grid import run_ids
from hpcsweep.grid.child_runs import ChildRuns
from hpcsweep.grid.executors.base import Batch
from hpcsweep.grid.launch import write_points_file
from hpcsweep.grid.runs import Lineage, create_parent
from hpcsweep.grid.spec import load_grid
from hpcsweep.grid.task import point_run
from hpcsweep.tracking.experiments import experiment_id


def create_counted(points_file: Path, task: int) -> str:
    """A stand-in for creating a run: leaves one file per call, so the test can count the calls."""

    def create() -> str:
        marker = points_file.parent / f"created-{os.getpid()}-{task}"
        marker.write_text("")
        return f"run-of-{os.getpid()}"

    return run_ids.run_id_of(points_file, task, create, wait_s=30)


def test_processes_racing_for_one_point_make_one_run_and_all_read_its_id(tmp_path):
    points_file = tmp_path / "points-0.json"
    with ProcessPoolExecutor(6) as pool:
        ids = list(pool.map(create_counted, [points_file] * 12, [3] * 12))
    assert len(list(tmp_path.glob("created-*"))) == 1
    assert len(set(ids)) == 1 and run_ids.recorded(points_file, 3) == ids[0]


def test_a_claimant_that_fails_gives_the_claim_back_for_the_next_to_create(tmp_path):
    points_file = tmp_path / "points-0.json"

    def refused() -> str:
        raise ConnectionError("server away")

    with pytest.raises(ConnectionError):
        run_ids.run_id_of(points_file, 0, refused)
    assert run_ids.run_id_of(points_file, 0, lambda: "second-try") == "second-try"


def test_a_claim_whose_holder_died_is_named_with_what_to_do(tmp_path):
    points_file = tmp_path / "points-0.json"
    assert run_ids.claim(points_file, 1)  # and its process never writes the run id
    with pytest.raises(UserError) as refused:
        run_ids.run_id_of(points_file, 1, lambda: "never", wait_s=1)
    claim = tmp_path / "run-ids" / "points-0-1.claim"
    assert str(refused.value) == (
        f"{points_file}[1]: no run id after 1 s although {claim} says a process is creating the run; "
        f"it died on the way: delete that file and relaunch the grid"
    )


def test_a_task_that_starts_first_makes_its_own_run_and_the_launcher_makes_only_the_others(
    project, tracking_server, monkeypatch, capsys
):
    name = f"childruns{os.getpid()}"
    grid_file = write_grid(project, {"name": name, "base": TINY, "seeds": [0, 1, 2]})
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    grid = load_grid(grid_file, project / "params.yaml", {})
    client = mlflow.MlflowClient(tracking_server)
    experiment = experiment_id(client, name)
    lineage = Lineage(name, grid_file.name, experiment, create_parent(client, grid, experiment, "test"))
    batch = Batch(0, name, grid.points, project)
    write_points_file(batch, lineage, None)
    document = json.loads(batch.points_file.read_text())

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")  # task 1 of array 4242 runs before the launcher got to it
    first = point_run(batch.points_file, 1, document, grid.points[1].config)
    children = ChildRuns(client, lineage)
    children.create(batch, [{"slurm_job_id": "4242", "slurm_array_task_id": str(task)} for task in range(3)])
    children.close(cancel=False)

    assert f"{name}: 2 runs created in" in capsys.readouterr().out
    assert point_run(batch.points_file, 1, document, grid.points[1].config) == first  # a requeue: the same run
    runs = client.search_runs([experiment], "tags.`hpcsweep.role` = 'point'")
    assert sorted(run.data.tags["point"] for run in runs) == ["seed=0", "seed=1", "seed=2"]
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {lineage.parent_run_id}
    by_task = {int(run.data.tags["slurm_array_task_id"]): run for run in runs}
    assert by_task[1].info.run_id == first and by_task[1].info.status == "RUNNING"
    assert by_task[1].data.tags["slurm_log"] == str(project / "logs" / "4242_1.out")
    assert {by_task[0].info.status, by_task[2].info.status} == {"SCHEDULED"}
    assert by_task[1].data.params == by_task[0].data.params | {"seed": "1"}

"""What `hpcsweep grid` promises about its options and its checks before anything is created.

README, "What a launch does": grids over 1000 points need `--yes`; the tracking server must answer,
`sbatch` exist and the prepared data be where jobs read it, else one line, a non-zero exit and
nothing written; `--rerun` runs every point again, finished ones included, into new runs; more
points than SLURM's MaxArraySize become several job arrays. The SLURM-side options
(`--max-parallel`, `--template`, relaunch while jobs are queued) and arrays split under the dev
cluster's small MaxArraySize are tested on the dev cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.project import ROOT
from helpers.runs import TINY, environment, grid_command, point_runs, write_grid
from helpers.synthetic import VAL_SIZE
from hpcsweep.data.prepare import prepare
from hpcsweep.grid.executors.slurm import SlurmExecutor, parse_max_array_size
from hpcsweep.grid.launch import make_batches
from hpcsweep.grid.spec import load_grid

SMALL = {**TINY, "limit_train_samples": 60}  # one step of one epoch: the launch is under test, not training


def launch(project: Path, grid: Path, uri: str, *options: str) -> subprocess.CompletedProcess:
    """`hpcsweep grid` in the project folder, logging to `uri`."""
    return subprocess.run(
        grid_command(grid, *options), cwd=project, env=environment(uri), capture_output=True, text=True
    )


def unopened_store(project: Path) -> tuple[str, Path]:
    """A SQLite store that does not exist yet: if it still does not after a command, nothing opened it."""
    path = project / "mlflow.db"
    return f"sqlite:///{path}", path


def files_under(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def thousand_and_one_points(project: Path) -> Path:
    lrs = [round(0.001 * (i + 1), 3) for i in range(1001)]
    return write_grid(project, {"name": "big", "base": {"accelerator": "cpu"}, "grid": {"lr": lrs}})


def array_lines(scripts: list[Path]) -> list[str]:
    return [
        line for script in scripts for line in script.read_text().splitlines() if line.startswith("#SBATCH --array")
    ]


@pytest.mark.slow  # 1001 configs validated: seconds
def test_a_grid_over_1000_points_is_refused_without_yes_and_accepted_with_it(prepared):
    project = prepared.parent.parent
    grid = thousand_and_one_points(project)
    uri, store = unopened_store(project)
    before = files_under(project)
    refused = launch(project, grid, uri, "--dry-run")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"Error: {grid}: at least 1001 points (1001 from the axes and seeds); grids over 1000 need --yes\n"
    )
    assert files_under(project) == before

    # no SLURM command on PATH (a laptop): Slurm's default MaxArraySize, 1001, takes task ids 0..1000
    no_slurm = {**environment(uri), "PATH": str(Path(sys.executable).parent)}
    accepted = subprocess.run(
        grid_command(grid, "--executor", "slurm", "--dry-run", "--yes"),
        cwd=project,
        env=no_slurm,
        capture_output=True,
        text=True,
    )
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    [points_file] = project.glob("runs/big/*/points-*.json")
    assert len(json.loads(points_file.read_text())["points"]) == 1001
    assert array_lines(list(project.glob("runs/big/*/job-*.sbatch"))) == ["#SBATCH --array=0-1000%8"]
    assert not store.exists()  # a dry run opens no store: no run was created


def test_a_grid_over_the_clusters_max_array_size_becomes_several_arrays_in_grid_order(tmp_path):
    spec = {"name": "huge", "base": {"accelerator": "cpu"}, "seeds": [0]}
    grid = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {})
    points = [dataclasses.replace(grid.points[0], index=index) for index in range(2500)]  # one shape, as seeds make
    batches = make_batches(dataclasses.replace(grid, points=points), points, tmp_path / "launch", max_size=1001)
    for batch in batches:
        SlurmExecutor().prepare(batch)
    assert array_lines([batch.script for batch in batches]) == [
        "#SBATCH --array=0-1000%8",
        "#SBATCH --array=0-1000%8",
        "#SBATCH --array=0-497%8",
    ]
    assert [point.index for batch in batches for point in batch.points] == list(range(2500))
    assert len({batch.points_file for batch in batches}) == 3  # task i of each array reads entry i of its own


def test_max_array_size_is_read_from_scontrol_show_config():
    recorded = (ROOT / "tests/fixtures/slurm/scontrol-show-config.txt").read_text()  # the dev cluster's
    assert parse_max_array_size(recorded) == 4
    assert parse_max_array_size("slurm_load_ctl_conf error: Unable to contact slurm controller") is None


def test_a_tracking_server_that_does_not_answer_stops_the_launch_in_one_line_before_anything_is_written(prepared):
    project = prepared.parent.parent
    grid = write_grid(project, {"name": "noserver", "base": SMALL, "seeds": [0]})
    uri = f"http://127.0.0.1:{closed_port()}"
    before = files_under(project)
    done = launch(project, grid, uri)
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: tracking server {uri} does not answer (") and done.stderr.endswith(
        "); start it or set tracking.uri\n"
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert files_under(project) == before


def test_a_slurm_launch_where_sbatch_is_not_on_the_path_is_one_line_and_writes_nothing(prepared, tmp_path):
    project = prepared.parent.parent
    grid = write_grid(project, {"name": "nosbatch", "base": SMALL, "seeds": [0]})
    uri, store = unopened_store(project)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    before = files_under(project)
    done = subprocess.run(
        grid_command(grid, "--executor", "slurm"),
        cwd=project,
        env={**environment(uri), "PATH": str(empty)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr == "Error: sbatch not found on PATH: run on a SLURM login node, or use --executor local\n"
    assert files_under(project) == before and not store.exists()


def test_a_launch_without_prepared_data_where_jobs_read_it_is_one_line_and_writes_nothing(project):
    grid = write_grid(project, {"name": "nodata", "base": SMALL, "seeds": [0]})
    uri, store = unopened_store(project)
    before = files_under(project)
    done = launch(project, grid, uri)
    assert done.returncode == 1
    prepared = (project / "data/prepared").resolve()
    assert done.stderr == (
        f"Error: {prepared}: no prepared data where jobs will read it; "
        "run `hpcsweep prepare` (or `dvc pull prepare`) first\n"
    )
    assert files_under(project) == before and not store.exists()


@pytest.mark.slow
def test_rerun_trains_points_that_already_finished_again_into_new_runs(prepared, tracking_server):
    project = prepared.parent.parent
    name = f"rerun{os.getpid()}"
    grid = write_grid(project, {"name": name, "base": SMALL, "grid": {"optimizer": ["sgd"]}})
    first = launch(project, grid, tracking_server)
    assert first.returncode == 0, first.stderr[-3000:]
    [finished] = [r for r in point_runs(tracking_server, name) if r.data.tags["hpcsweep.role"] == "point"]
    assert finished.info.status == "FINISHED"

    again = launch(project, grid, tracking_server, "--rerun")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 1 points to run" in again.stdout
    runs = point_runs(tracking_server, name)
    children = [r for r in runs if r.data.tags["hpcsweep.role"] == "point"]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert len({r.info.run_id for r in children}) == 2 and finished.info.run_id in {r.info.run_id for r in children}
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 2  # one launch run each


@pytest.mark.slow
def test_a_relaunch_trains_again_the_points_that_finished_on_other_prepared_data(prepared, tracking_server):
    """The data prepared again with another validation split: the finished run trained on another
    training set, so it is not the point's answer any more and the relaunch trains the point again
    (without the data_md5 check it said "nothing to do")."""
    project = prepared.parent.parent
    name = f"redata{os.getpid()}"
    grid = write_grid(project, {"name": name, "base": SMALL, "grid": {"optimizer": ["sgd"]}})
    first = launch(project, grid, tracking_server)
    assert first.returncode == 0, first.stderr[-3000:]
    same = launch(project, grid, tracking_server)
    assert same.returncode == 0 and "nothing to do" in same.stdout  # the same data: done

    prepare(project / "data/raw", prepared, VAL_SIZE - 10)
    again = launch(project, grid, tracking_server, "-s", f"data.val_size={VAL_SIZE - 10}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{name}: 1 points ended on other prepared data than {prepared.resolve()} holds now" in again.stdout
    assert "1 of 1 points to run" in again.stdout
    runs = [r for r in point_runs(tracking_server, name) if r.data.tags["hpcsweep.role"] == "point"]
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["data_md5"] for r in runs}) == 2

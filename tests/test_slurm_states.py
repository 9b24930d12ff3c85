"""SLURM's own verdicts on a grid's tasks, caused for real on the development cluster and shown by
`hpcsweep status`: a task past its time limit ends TIMEOUT, a task past its memory OUT_OF_MEMORY.

One launch, to keep the cluster time short, also checks what a site relies on while a grid runs: a
site's `--template FILE` is the script that runs, `--max-parallel` holds an array's other tasks
back, and a relaunch leaves points whose job is still queued or running alone while it resubmits
the one whose job died. The dev cluster enforces memory with task/cgroup (slurm/cluster/up.sh).
The parsers behind `status` are also tested on recorded outputs in test_slurm_parsers.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest

from helpers.cluster import children, environment_with_slurm, launch_on_cluster, settled, wait_until
from helpers.project import require
from helpers.runs import TINY, hpcsweep, write_grid

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 00:03:00 is the shortest limit hpcsweep submits (SIGUSR1 comes 90 s before it)
RESOURCES = {"cpus_per_task": 1, "mem": "1G", "time": "00:03:00", "partition": "debug"}
MARKER = "site template ran job"
SITE_TEMPLATE = f"""#!/bin/bash
${{directives}}
set -euo pipefail
${{setup}}
echo "{MARKER} $$SLURM_JOB_ID"
srun --cpus-per-task="$$SLURM_CPUS_PER_TASK" ${{command}} "$$SLURM_ARRAY_TASK_ID"
"""
LONG, QUICK, TOO_BIG = (
    {"seed": 0, "max_epochs": 300},  # trains for minutes: the one SLURM times out
    {"seed": 1},  # held back by --max-parallel 1 while LONG runs, then completes
    {"seed": 2, "slurm.mem": "300M"},  # importing torch alone needs more
)


def label(point: dict) -> str:
    """The point's name in the run tag `point` (as grid.spec names it)."""
    return ", ".join(f"{key}={value}" for key, value in point.items())


def slurm(*command: str, uri: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, env=environment_with_slurm(uri)).stdout


def queue(job: str, uri: str) -> dict[str, tuple[str, str]]:
    """{task: (state, reason)} of the array's tasks still in the queue, straight from squeue."""
    lines = slurm("squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", job, uri=uri).split()
    return {task: (state, reason) for task, state, reason in (line.split("|") for line in lines)}


def left_queue(job: str, uri: str) -> bool:
    return not slurm("squeue", "-h", "-j", job, uri=uri).strip()


def time_out(task: str, uri: str) -> None:
    """Cut the running task's limit to now, so SLURM itself ends it TIMEOUT at its next check.

    SIGUSR1 comes with it (the limit falls inside the signal's lead), and a training that handles it
    asks SLURM to requeue the task, as before any time limit: made not requeueable first, the task
    times out instead of coming back."""
    slurm("scontrol", "update", f"JobId={task}", "Requeue=0", "TimeLimit=0", uri=uri)


def status_by_run(name: str, project: Path, uri: str) -> tuple[dict[str, tuple[str, str, str | None]], str]:
    """`hpcsweep status` as {run id: (MLflow status, SLURM state, log path or None)} and its summary line;
    a point that did not finish has its task's log on the line below its row."""
    done = hpcsweep(["status", name], project, uri, env=environment_with_slurm(uri))
    assert done.returncode == 0, done.stderr
    header, *lines, summary = done.stdout.splitlines()
    rows, above = {}, None
    for line in lines:
        fields = line.split(maxsplit=1)
        if fields[0] == "log:":  # the row above did not finish: where its task logged
            rows[above] = (*rows[above][:2], fields[1])
        else:
            status, state, _, above, *_ = line.split()
            rows[above] = (status, state, None)
    return rows, summary


def memory_enforced(uri: str) -> bool:
    """up.sh enforces --mem with task/cgroup where the machine lets slurmd make memory cgroups."""
    return "task/cgroup" in slurm("scontrol", "show", "config", uri=uri)


def mlflow_status(run, uri: str) -> str:
    return mlflow.MlflowClient(uri).get_run(run.info.run_id).info.status


@pytest.fixture
def slurm_project(prepared, slurm_cluster):
    return prepared.parent.parent


@pytest.fixture
def grid_name(tracking_server, slurm_cluster):
    """The grid's name; whatever of it is still queued when the test ends is cancelled (LONG would
    otherwise train, and requeue itself, for minutes after a failure)."""
    name = f"states{os.getpid()}"
    yield name
    jobs = {r.data.tags["slurm_job_id"] for r in children(tracking_server, name) if "slurm_job_id" in r.data.tags}
    if jobs:
        subprocess.run(["scancel", *sorted(jobs)], env=environment_with_slurm(tracking_server), check=False)


def rendered_arrays(project: Path, name: str) -> list[str]:
    """The --array line of each job script the launch wrote, checking each is the site's template."""
    scripts = sorted(project.glob(f"runs/{name}/*/job-*.sbatch"))
    assert all(script.read_text().count(f'echo "{MARKER} $SLURM_JOB_ID"') == 1 for script in scripts)
    return sorted(line for script in scripts for line in script.read_text().splitlines() if "--array" in line)


def test_status_shows_timeout_and_out_of_memory_of_a_grid_run_with_a_site_template(
    slurm_project, tracking_server, grid_name
):
    uri, name = tracking_server, grid_name
    require(memory_enforced(uri), "the dev cluster cannot enforce --mem here (no writable cgroup v1 memory controller)")
    template = slurm_project / "site.sbatch"
    template.write_text(SITE_TEMPLATE)
    options = ("--template", str(template), "--max-parallel", "1")
    spec = {"name": name, "base": TINY, "slurm": RESOURCES, "variants": [LONG, QUICK, TOO_BIG]}
    grid = write_grid(slurm_project, spec)
    done = launch_on_cluster(grid, slurm_project, uri, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("submitted job array") == 2  # slurm.mem makes TOO_BIG a shape of its own
    assert rendered_arrays(slurm_project, name) == ["#SBATCH --array=0-0%1", "#SBATCH --array=0-1%1"]
    first = {r.data.tags["point"]: r for r in children(uri, name)}
    long, quick, too_big = (first[label(point)] for point in (LONG, QUICK, TOO_BIG))
    array = long.data.tags["slurm_job_id"]

    wait_until(lambda: queue(array, uri).get(f"{array}_0", ("",))[0] == "RUNNING", 120, "the long task to run")
    throttled = ("PENDING", "JobArrayTaskLimit")  # --max-parallel 1; a second task running would never match
    wait_until(lambda: queue(array, uri).get(f"{array}_1") == throttled, 30, "the second task to be held back")
    assert "ArrayTaskThrottle=1" in slurm("scontrol", "-o", "show", "job", array, uri=uri)

    # relaunched while LONG runs and QUICK waits: only TOO_BIG, whose job died, gets a new run and job
    wait_until(lambda: left_queue(too_big.data.tags["slurm_job_id"], uri), 120, "the task past its memory to die")
    again = launch_on_cluster(grid, slurm_project, uri, *options)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 3 points to run" in again.stdout and again.stdout.count("submitted job array") == 1
    [relaunched] = [
        r
        for r in children(uri, name)
        if r.info.run_id not in {long.info.run_id, quick.info.run_id, too_big.info.run_id}
    ]
    assert relaunched.data.tags["point"] == label(TOO_BIG)

    wait_until(lambda: mlflow_status(long, uri) == "RUNNING", 120, "the long training to start")
    time_out(f"{array}_0", uri)
    wait_until(lambda: settled(uri, name, 4), 300, "every job to end")
    rows, summary = status_by_run(name, slurm_project, uri)
    assert {run: state for run, (_, state, _) in rows.items()} == {
        long.info.run_id: "TIMEOUT",
        quick.info.run_id: "COMPLETED",
        relaunched.info.run_id: "OUT_OF_MEMORY",
    }
    assert rows[quick.info.run_id][0] == "FINISHED" and rows[quick.info.run_id][2] is None
    # each task that did not finish: its own log, the --output pattern resolved for its array and task
    for run, job in ((long, array), (relaunched, relaunched.data.tags["slurm_job_id"])):
        [log] = slurm_project.glob(f"runs/{name}/*/logs/{job}_0.out")
        assert rows[run.info.run_id][2] == str(log.resolve())
    assert summary == "3 points: 1 COMPLETED, 1 OUT_OF_MEMORY, 1 TIMEOUT"
    assert f"{MARKER} " in next(slurm_project.glob(f"runs/{name}/*/logs/{array}_1.out")).read_text()

"""The grid launcher on a real two-node Slurm cluster, logging to a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from helpers.cluster import children, environment_with_slurm, launch_on_cluster, settled, wait_until
from helpers.faults import kill_at, kill_hook
from helpers.runs import TINY, grid_command, history, hpcsweep, point_runs, write_grid
from hpcsweep.grid import run_ids

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# mem is per node and enforced (up.sh's task/cgroup): two DDP ranks on one node need more than 1G
RESOURCES = {"cpus_per_task": 1, "mem": "2G", "time": "00:20:00", "partition": "debug", "max_parallel": 8}


@pytest.fixture
def slurm_project(prepared, slurm_cluster):
    return prepared.parent.parent


def test_a_grid_with_ddp_and_multi_node_points_completes_on_the_cluster(slurm_project, tracking_server):
    name = f"cluster{os.getpid()}"
    spec = {
        "name": name,
        "base": TINY,
        "slurm": RESOURCES,
        "grid": {"optimizer": ["sgd", "adam"]},
        "variants": [
            {"optimizer": "sgd", "seed": 0},
            {"optimizer": "sgd", "seed": 1},
            {"optimizer": "adam", "seed": 0},
            {"optimizer": "adam", "seed": 1},
            {"optimizer": "sgd", "seed": 2, "strategy": "ddp", "devices": 2},
            {"optimizer": "sgd", "seed": 3, "strategy": "ddp", "num_nodes": 2},
            {"optimizer": "adam", "seed": 2, "memory_limit_mb": 1},
        ],
    }  # made to fail
    grid = write_grid(slurm_project, spec)
    done = launch_on_cluster(grid, slurm_project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    # shapes: 1x1 (5 points: over the dev cluster's MaxArraySize of 4, so two arrays), 1 node x 2 tasks, 2 nodes x 1
    assert done.stdout.count("submitted job array") == 4
    arrays = sorted(
        line
        for script in slurm_project.glob(f"runs/{name}/*/job-*.sbatch")
        for line in script.read_text().splitlines()
        if "--array" in line
    )
    assert arrays == [
        "#SBATCH --array=0-0%8",
        "#SBATCH --array=0-0%8",
        "#SBATCH --array=0-0%8",
        "#SBATCH --array=0-3%8",
    ]
    wait_until(lambda: settled(tracking_server, name, 7), 600, "all 7 jobs to end")
    runs = children(tracking_server, name)
    assert (
        len(runs) == 7
        and len([r for r in point_runs(tracking_server, name) if r.data.tags["hpcsweep.role"] == "launch"]) == 1
    )
    failing = [r for r in runs if r.data.params["memory_limit_mb"] == "1"]
    assert [r.info.status for r in failing] == ["FAILED"]
    finished = [r for r in runs if r not in failing]
    assert {r.info.status for r in finished} == {"FINISHED"}
    assert all("val/acc" in r.data.metrics and "slurm_job_id" in r.data.tags for r in finished)
    # each point is its own array task: job and task together name it
    assert len({(r.data.tags["slurm_job_id"], r.data.tags["slurm_array_task_id"]) for r in runs}) == 7
    ddp = [r for r in finished if r.data.params["strategy"] == "ddp"]
    assert sorted((r.data.params["devices"], r.data.params["num_nodes"]) for r in ddp) == [("1", "2"), ("2", "1")]
    for run in ddp:  # one run per training, however many ranks, and each rank its own shard
        assert history(tracking_server, run.info.run_id, "train/repeated_samples") == [(0, 0.0)]

    status = hpcsweep(["status", name], slurm_project, tracking_server, env=environment_with_slurm(tracking_server))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert sum("COMPLETED" in line for line in lines[1:-1]) == 6
    assert lines[-1] == "7 points: 6 COMPLETED, 1 FAILED"

    again = launch_on_cluster(grid, slurm_project, tracking_server)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 7 points to run" in again.stdout and again.stdout.count("submitted job array") == 1


def test_a_job_with_the_default_mem_and_cpus_runs_and_sigusr1_requeues_it_into_the_same_run(
    slurm_project, tracking_server
):
    # No mem and no cpus_per_task: params.yaml's defaults (16G, 4 CPUs) must fit a dev node, as they
    # fit a real one, because the dev cluster declares this machine's memory and CPUs. One job
    # checks both that and the requeue, which takes the cluster a minute or more each time.
    name = f"requeue{os.getpid()}"
    grid = write_grid(
        slurm_project,
        {
            "name": name,
            "slurm": {"partition": "debug", "time": "00:20:00"},
            "seeds": [0],
            "base": {**TINY, "max_epochs": 4, "batch_size": 10, "base_batch_size": 10},
        },
    )
    done = launch_on_cluster(grid, slurm_project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("submitted job array") == 1
    [run] = children(tracking_server, name)
    wait_until(lambda: history(tracking_server, run.info.run_id, "val/acc"), 300, "the first epoch")
    job = f"{run.data.tags['slurm_job_id']}_0"
    subprocess.run(["scancel", "--signal=USR1", "--full", job], check=True, env=environment_with_slurm(tracking_server))
    wait_until(lambda: settled(tracking_server, name, 1), 600, "the requeued job to finish")
    [after] = children(tracking_server, name)
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert "val/acc" in after.data.metrics
    assert [step for step, _ in history(tracking_server, run.info.run_id, "val/acc")] == [0, 1, 2, 3]
    log = next(Path(slurm_project).glob(f"runs/{name}/*/logs/*.out")).read_text()
    assert "Handling auto-requeue signal" in log or "requeing job" in log


def test_a_time_limit_inside_the_requeue_signals_lead_is_refused_before_submission(slurm_project, tracking_server):
    name = f"short{os.getpid()}"
    grid = write_grid(
        slurm_project, {"name": name, "base": TINY, "seeds": [0], "slurm": {**RESOURCES, "time": "00:01:00"}}
    )
    done = launch_on_cluster(grid, slurm_project, tracking_server)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: point 0 (seed=0): slurm.time=00:01:00 leaves 0 s of training before SIGUSR1, which SLURM sends "
        "90 s before the limit to checkpoint and requeue; use at least 00:03:00"
    )
    assert point_runs(tracking_server, name) == [] and not (slurm_project / "runs" / name).exists()


def test_a_job_requeued_again_and_again_without_an_epoch_stops_after_its_budget(slurm_project, tracking_server):
    name = f"budget{os.getpid()}"
    slow_epoch = {**TINY, "model": "resnet18", "max_epochs": 2, "batch_size": 2, "base_batch_size": 2}
    spec = {"name": name, "base": slow_epoch, "seeds": [0], "slurm": {**RESOURCES, "max_requeues": 2}}
    done = launch_on_cluster(write_grid(slurm_project, spec), slurm_project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = children(tracking_server, name)
    job, folder = f"{run.data.tags['slurm_job_id']}_0", slurm_project / "checkpoints" / run.info.run_id

    def log() -> str:
        found = list(slurm_project.glob(f"runs/{name}/*/logs/*.out"))
        return found[0].read_text() if found else ""

    def failed() -> bool:
        return mlflow.MlflowClient(tracking_server).get_run(run.info.run_id).info.status == "FAILED"

    signalled = 0
    while not failed():  # each attempt, once training holds its signal handler (and has resumed): SIGUSR1
        assert signalled <= 5, "the job went on requeueing past its budget"
        wait_until(
            lambda: (
                failed()
                or (
                    log().count("Setting signal handlers") > signalled
                    and log().count("Restored all states from the checkpoint") >= signalled
                )
            ),
            300,
            f"attempt {signalled + 1} to train",
        )
        if failed():
            break
        subprocess.run(
            ["scancel", "--signal=USR1", "--full", job], check=True, env=environment_with_slurm(tracking_server)
        )
        signalled += 1
        wait_until(lambda: log().count("Requeued SLURM job") >= signalled, 300, f"requeue {signalled}")
        wait_until(
            lambda: len(list(folder.glob("hpc_ckpt_*.ckpt"))) <= 1, 60, "the older hpc checkpoint to go"
        )  # removed as the job stops
    wait_until(lambda: settled(tracking_server, name, 1), 300, "the job to end")
    assert signalled == 2  # every attempt was signalled mid-epoch: its epoch is minutes long on a CPU
    reason = mlflow.MlflowClient(tracking_server).get_run(run.info.run_id).data.tags["hpcsweep.failure_reason"]
    assert reason.startswith(f"job {job} was requeued 2 times in a row without finishing an epoch")
    assert [path.name for path in folder.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_2.ckpt"]
    status = hpcsweep(["status", name], slurm_project, tracking_server, env=environment_with_slurm(tracking_server))
    [row, log_line] = status.stdout.splitlines()[1:-1]
    assert row.startswith("FAILED") and "FAILED" in row.split()[1] and row.endswith(f"({reason})")
    assert log_line.split() == ["log:", str(next(slurm_project.glob(f"runs/{name}/*/logs/*.out")).resolve())]


def test_cancel_stops_a_running_grid_and_marks_its_runs_killed(slurm_project, tracking_server):
    name = f"cancel{os.getpid()}"
    grid = write_grid(
        slurm_project,
        {
            "name": name,
            "slurm": RESOURCES,
            "seeds": [0, 1],
            "base": {**TINY, "max_epochs": 50, "batch_size": 10, "base_batch_size": 10},
        },
    )
    done = launch_on_cluster(grid, slurm_project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    wait_until(lambda: any(r.info.status == "RUNNING" for r in children(tracking_server, name)), 300, "a running job")
    job = children(tracking_server, name)[0].data.tags["slurm_job_id"]
    cancel = hpcsweep(
        ["cancel", name], slurm_project, tracking_server, env=environment_with_slurm(tracking_server), input="y\n"
    )
    assert cancel.returncode == 0 and "2 runs marked KILLED" in cancel.stdout
    assert "View run" not in cancel.stdout  # MLflow's link per run ended: 2000 lines for 1000 points
    assert cancel.stdout.startswith(f"grid {name}: scancel job arrays {job}; mark 2 runs KILLED (")
    wait_until(
        lambda: (
            not subprocess.run(
                ["squeue", "-h", "-j", job], capture_output=True, text=True, env=environment_with_slurm(tracking_server)
            ).stdout.strip()
        ),
        120,
        "the array to leave the queue",
    )
    time.sleep(3)  # a dying job must not overwrite KILLED
    assert {r.info.status for r in children(tracking_server, name)} == {"KILLED"}
    status = hpcsweep(["status", name], slurm_project, tracking_server, env=environment_with_slurm(tracking_server))
    assert "CANCELLED" in status.stdout


def test_a_partition_sbatch_rejects_shows_sbatch_message_and_creates_no_run(slurm_project, tracking_server):
    name = f"badpart{os.getpid()}"
    grid = write_grid(
        slurm_project,
        {"name": name, "base": TINY, "seeds": [0], "slurm": {**RESOURCES, "partition": "nosuchpartition"}},
    )
    done = launch_on_cluster(grid, slurm_project, tracking_server)
    assert done.returncode == 1
    assert "sbatch refused" in done.stderr and "invalid partition" in done.stderr.lower()
    assert point_runs(tracking_server, name) == []


def test_a_relaunch_after_the_launcher_died_before_making_the_runs_makes_them_and_queues_nothing_twice(
    slurm_project, tracking_server
):
    """A launcher SIGKILLed after sbatch took its first array, as it starts making that array's runs
    (a lost SSH session): those tasks wait in the queue without runs and the second array was never
    submitted. The relaunch makes the waiting tasks' runs, submits only the second array's points,
    and no point ends up with two runs or two jobs."""
    name = f"interrupted{os.getpid()}"
    waiting = {**RESOURCES, "extra": {"begin": "now+1hour"}}  # the tasks stay queued for the whole test
    grid = write_grid(slurm_project, {"name": name, "base": TINY, "slurm": waiting, "seeds": [0, 1, 2, 3, 4, 5, 6, 7]})
    hooks = kill_hook(slurm_project / "kill-hook")
    killing = environment_with_slurm(tracking_server) | kill_at("run-ids/", 1, 0)  # the first run's claim
    killing["PYTHONPATH"] = f"{hooks}:{os.environ.get('PYTHONPATH', '')}"
    first = subprocess.run(
        grid_command(grid, "--executor", "slurm"), cwd=slurm_project, env=killing, capture_output=True, text=True
    )
    try:
        assert first.returncode == -9, first.stderr[-3000:]
        [folder] = (slurm_project / "runs" / name).iterdir()
        [record] = (folder / "job-ids").iterdir()  # the first array's, written as sbatch answered
        queued = json.loads(record.read_text())["job_id"]
        ids = folder / "run-ids"
        claims = {claim.stem for claim in ids.glob("*.claim")}  # the killed launcher got this far
        recorded = {path.name for path in ids.iterdir() if not path.name.endswith(".claim") and path.name[0] != "."}
        stale = claims - recorded  # claimed, and the launcher died before making the run
        unmade = 4 - len(claims)  # the first array's tasks nobody had started making a run for
        unclaimed = sorted({f"points-0-{task}" for task in range(4)} - claims)
        if unclaimed:  # and one that a launcher dead for longer claimed: the relaunch takes it over
            abandoned = (ids / unclaimed[0]).with_suffix(".claim")
            abandoned.touch()
            os.utime(abandoned, (time.time() - run_ids.WAIT_S - 60,) * 2)

        again = launch_on_cluster(grid, slurm_project, tracking_server)
        assert again.returncode == 0, again.stderr[-3000:]
        if unmade:
            assert f"{name}: {unmade} runs created for tasks an earlier launch queued without them" in again.stdout
        assert "4 of 8 points to run" in again.stdout and again.stdout.count("submitted job array") == 1
        runs = children(tracking_server, name)
        by_job = Counter(run.data.tags["slurm_job_id"] for run in runs)
        assert by_job[queued] == len(recorded) + unmade and len(by_job) == 2 and len(runs) == 8 - len(stale)
        assert all(run.info.status == "SCHEDULED" for run in runs)
        assert len({run.data.tags["config_hash"] for run in runs}) == len(runs)  # no point twice
    finally:
        jobs = subprocess.run(
            ["squeue", "-h", "-o", "%A", "-n", f"hpcsweep-{name}"],
            capture_output=True,
            text=True,
            env=environment_with_slurm(tracking_server),
        ).stdout.split()
        subprocess.run(["scancel", *jobs], env=environment_with_slurm(tracking_server), check=False)

"""SLURM's answers, read back: the parsers behind `hpcsweep status` and a relaunch's live-job check,
on recorded command output, as submitit tests its parsers.

tests/fixtures/slurm/ holds what squeue, `scontrol show job`, the jobcomp log and sacct print, each
file's header saying where it came from: recorded on the development cluster (real TIMEOUT,
OUT_OF_MEMORY, NODE_FAIL and PREEMPTED jobs among them), or, for sacct, which needs accounting the
dev cluster does not have, written in the format Slurm documents. test_slurm_states.py causes
TIMEOUT and OUT_OF_MEMORY on the cluster itself.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from hpcsweep.grid.executors import slurm_states
from hpcsweep.grid.status import status_rows, summary

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


def recorded(name: str) -> str:
    """A recorded output as the command printed it: the fixture less its `# ` header."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("# "))


def test_squeue_gives_every_array_task_its_own_state():
    expected = {"242_1": "PENDING", "242_0": "RUNNING", "243_0": "RUNNING"}
    assert slurm_states.parse_squeue(recorded("squeue.txt")) == expected


def test_scontrol_records_name_array_tasks_and_a_step_killed_for_memory_is_out_of_memory():
    # 243_0 and 246_0: SLURM says FAILED (the batch script failed after srun), DerivedExitCode 0:125 says why
    assert slurm_states.parse_jobcomp(recorded("scontrol-show-job.txt")) == {
        "242_1": "COMPLETED",
        "242_0": "TIMEOUT",
        "243_0": "OUT_OF_MEMORY",
        "246_0": "OUT_OF_MEMORY",
        "247_1": "NODE_FAIL",
        "247_0": "NODE_FAIL",
        "248_0": "PENDING",
        "250_0": "PREEMPTED",
    }


def test_the_jobcomp_log_gives_a_job_that_ended_more_than_once_its_last_end():
    # 228 timed out, was requeued (PENDING) and failed; 248_0 failed with its node, was requeued, cancelled
    assert slurm_states.parse_jobcomp(recorded("jobcomp.txt")) == {
        "228": "FAILED",
        "229": "TIMEOUT",
        "236": "OUT_OF_MEMORY",
        "243_0": "OUT_OF_MEMORY",
        "242_0": "TIMEOUT",
        "246_0": "OUT_OF_MEMORY",
        "242_1": "COMPLETED",
        "247_0": "NODE_FAIL",
        "248_0": "CANCELLED",
        "247_1": "NODE_FAIL",
        "250_0": "PREEMPTED",
        "251": "COMPLETED",
    }


def test_sacct_lines_give_each_job_its_state_and_cancelled_by_a_user_is_cancelled():
    assert slurm_states.parse_sacct(recorded("sacct.txt")) == {
        "242_0": "TIMEOUT",
        "242_1": "COMPLETED",
        "243_0": "OUT_OF_MEMORY",
        "247_0": "NODE_FAIL",
        "247_1": "NODE_FAIL",
        "248_0": "CANCELLED",
        "250_0": "PREEMPTED",
        "236": "OUT_OF_MEMORY",
        "260_0": "CANCELLED",
        "261_0": "RUNNING",
    }


# point -> (MLflow status, array job, task): the jobs of jobcomp.txt, one job SLURM never heard of, one
# point run by the local executor
POINTS = {
    "lr=0.1": ("FINISHED", "242", "1"),
    "lr=0.2": ("KILLED", "242", "0"),
    "lr=0.3": ("RUNNING", "243", "0"),
    "lr=0.4": ("RUNNING", "247", "1"),
    "lr=0.5": ("RUNNING", "250", "0"),
    "lr=0.6": ("SCHEDULED", "999", "0"),
    "lr=0.7": ("FINISHED", None, None),
}


def point_run(client: mlflow.MlflowClient, experiment: str, grid: str, point: str) -> None:
    """A grid's point run, tagged as the launcher tags it."""
    status, job, task = POINTS[point]
    tags = {"grid": grid, "hpcsweep.role": "point", "config_hash": point, "point": point}
    if job:
        tags |= {"slurm_job_id": job, "slurm_array_task_id": task}
    run = client.create_run(experiment, tags=tags)
    client.update_run(run.info.run_id, status=status)


@pytest.mark.slow  # an MLflow store of its own
def test_status_shows_slurms_verdict_beside_mlflows_from_the_jobcomp_log_alone(tmp_path, monkeypatch):
    """No SLURM command on PATH, as on a workstation that sees the cluster's jobcomp log: status reads
    the log and skips squeue, scontrol and sacct instead of failing."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("states")
    for point in POINTS:
        point_run(client, experiment, "states", point)
    monkeypatch.setenv("HPCSWEEP_SLURM_JOBCOMP", str(FIXTURES / "jobcomp.txt"))
    monkeypatch.setenv("PATH", str(tmp_path))

    rows = status_rows(client.tracking_uri, "states")
    assert [(row.point, row.run_status, row.slurm_state) for row in rows] == [
        ("lr=0.1", "FINISHED", "COMPLETED"),
        ("lr=0.2", "KILLED", "TIMEOUT"),
        ("lr=0.3", "RUNNING", "OUT_OF_MEMORY"),  # the kernel killed the training: its run never ended
        ("lr=0.4", "RUNNING", "NODE_FAIL"),
        ("lr=0.5", "RUNNING", "PREEMPTED"),
        ("lr=0.6", "SCHEDULED", "UNKNOWN"),
        ("lr=0.7", "FINISHED", "-"),
    ]
    assert summary(rows) == (
        "7 points: 1 COMPLETED, 1 FINISHED, 1 NODE_FAIL, 1 OUT_OF_MEMORY, 1 PREEMPTED, 1 SCHEDULED, 1 TIMEOUT"
    )

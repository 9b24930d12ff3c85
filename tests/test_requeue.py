"""A SLURM job that keeps being requeued: refused time limits, the requeue budget, one requeue checkpoint.

The cluster tests (test_slurm.py) signal real jobs; these check each rule on its own, fast.
"""

from __future__ import annotations

import os
import time
import uuid

import mlflow
import pytest

from helpers.project import ROOT
from helpers.runs import QUICK, environment, hpcsweep, overrides, runs_of, write_grid
from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.grid.executors.slurm import SlurmExecutor
from hpcsweep.grid.spec import load_grid
from hpcsweep.tracking.run_folder import RunFolder


def touch(path, mtime: float) -> None:
    path.write_bytes(b"checkpoint")
    os.utime(path, (mtime, mtime))


def test_a_time_limit_that_leaves_no_training_before_the_requeue_signal_is_refused(tmp_path):
    spec = {
        "name": "short",
        "base": {"accelerator": "cpu"},  # a SLURM launch refuses accelerator auto
        "slurm": {"time": "00:01:00"},
        "grid": {"optimizer": ["sgd", "adam"]},
    }
    grid = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {})
    with pytest.raises(UserError) as refused:
        SlurmExecutor().check_points(grid.points)
    assert str(refused.value) == (
        "point 0 (optimizer=sgd): slurm.time=00:01:00 leaves 0 s of training before SIGUSR1, which SLURM "
        "sends 90 s before the limit to checkpoint and requeue; use at least 00:03:00"
    )
    for enough in ("00:03:00", "1-00:00:00"):
        grid = load_grid(write_grid(tmp_path, {**spec, "slurm": {"time": enough}}), ROOT / "params.yaml", {})
        SlurmExecutor().check_points(grid.points)


def test_requeues_without_a_finished_epoch_are_counted_per_job_and_one_requeue_checkpoint_is_kept(tmp_path):
    folder = RunFolder(tmp_path)
    started = time.time()
    touch(tmp_path / "hpc_ckpt_1.ckpt", started - 60)  # an earlier attempt's
    touch(tmp_path / "hpc_ckpt_2.ckpt", started + 1)  # this attempt's, written on SIGUSR1
    folder.record_requeue("77_3", started)
    assert folder.stalled_requeues("77_3") == 1
    assert sorted(p.name for p in tmp_path.glob("hpc_ckpt_*")) == ["hpc_ckpt_2.ckpt"]

    touch(tmp_path / "hpc_ckpt_3.ckpt", started + 2)
    folder.record_requeue("77_3", started + 2)
    assert folder.stalled_requeues("77_3") == 2 and folder.stalled_requeues("78_0") == 0
    assert sorted(p.name for p in tmp_path.glob("hpc_ckpt_*")) == ["hpc_ckpt_3.ckpt"]

    touch(tmp_path / "last.ckpt", started + 3)  # an epoch ended in the next attempt: progress
    folder.record_requeue("77_3", started + 3)
    assert folder.stalled_requeues("77_3") == 0


@pytest.mark.slow
def test_a_job_past_its_requeue_budget_ends_its_run_failed_with_the_reason(prepared, tracking_server):
    project = prepared.parent.parent
    experiment = f"budget-{uuid.uuid4().hex[:8]}"  # unique: test_slurm names a grid budget<pid> on the same server
    settings = [*QUICK, f"tracking.experiment={experiment}", "slurm.max_requeues=2"]
    config = load_config(project / "params.yaml", settings)
    RunFolder.under(config.tracking.checkpoint_dir, config.hash).path.mkdir(parents=True)
    RunFolder.under(config.tracking.checkpoint_dir, config.hash).write_state(
        stalled_requeues={"job": "4242", "count": 2}
    )
    done = hpcsweep(
        ["train", *overrides(*settings)],
        project,
        tracking_server,
        env=environment(tracking_server, SLURM_JOB_ID="4242"),
    )
    reason = (
        "job 4242 was requeued 2 times in a row without finishing an epoch (slurm.max_requeues=2): "
        "give each job more time (slurm.time) or make an epoch shorter"
    )
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == f"Error: {reason}"
    [run] = runs_of(tracking_server, experiment)
    assert run.info.status == "FAILED" and run.data.tags["hpcsweep.failure_reason"] == reason
    assert "val/acc" not in mlflow.MlflowClient(tracking_server).get_run(run.info.run_id).data.metrics

"""Training end to end against a real MLflow server: mlflow run, DDP on 2 CPU processes, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from helpers.project import ROOT
from helpers.runs import QUICK, environment, history, hpcsweep, overrides, runs_of

pytestmark = pytest.mark.slow


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_mlflow_run_trains_into_exactly_one_complete_run(prepared, tracking_server, experiment):
    project = prepared.parent.parent
    for name in ("MLproject", "conda.yaml"):
        (project / name).write_text((ROOT / name).read_text())
    (project / "src").symlink_to(ROOT / "src")
    command = [
        "mlflow",
        "run",
        ".",
        "-e",
        "train",
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
        "-P",
        "max_epochs=2",
        "-P",
        "warmup_epochs=0",
        "-P",
        "batch_size=60",
        "-P",
        "base_batch_size=60",
        "-P",
        "optimizer=adam",
        "-P",
        "lr=1e-3",
        "-P",
        "accelerator=cpu",
    ]
    done = subprocess.run(command, cwd=project, env=environment(tracking_server), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer"] == "adam" and params["batch_size"] == "60" and params["model"] == "resnet20"
    assert [step for step, _ in history(tracking_server, run.info.run_id, "val/acc")] == [0, 1]
    for metric in ("train/loss", "val/loss", "epoch_time_s", "train/images_per_s", "peak_memory_mb", "total_time_s"):
        assert metric in run.data.metrics, metric
    assert {"config_hash", "git_commit", "data_md5"} <= set(run.data.tags)
    artifacts = [a.path for a in mlflow.MlflowClient(tracking_server).list_artifacts(run.info.run_id, "checkpoints")]
    assert "checkpoints/last.ckpt" in artifacts and "checkpoints/best.ckpt" in artifacts
    client = mlflow.MlflowClient(tracking_server)
    logged_config = json.loads(
        Path(client.download_artifacts(run.info.run_id, "config.json", str(project))).read_text()
    )
    assert logged_config["train"]["optimizer"] == "adam" and logged_config["train"]["max_epochs"] == 2


def test_ddp_on_two_cpu_processes_is_one_run_over_disjoint_shards(prepared, tracking_server, experiment):
    project = prepared.parent.parent
    args = [
        "train",
        *overrides(*QUICK, "max_epochs=2", "strategy=ddp", "devices=2", f"tracking.experiment={experiment}"),
    ]
    done = hpcsweep(args, project, tracking_server)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["micro_batch_size"] == 30  # 60 over 2 ranks
    assert history(tracking_server, run.info.run_id, "train/repeated_samples") == [(0, 0.0), (1, 0.0)]
    assert history(tracking_server, run.info.run_id, "train/unique_samples") == [(0, 300.0), (1, 300.0)]


def test_a_killed_training_resumes_from_its_checkpoint_into_the_same_run(prepared, tracking_server, experiment):
    project = prepared.parent.parent
    args = [
        sys.executable,
        "-m",
        "hpcsweep",
        "train",
        *overrides(*QUICK, "max_epochs=3", "batch_size=10", "base_batch_size=10", f"tracking.experiment={experiment}"),
    ]
    first = subprocess.Popen(
        args, cwd=project, env=environment(tracking_server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        # Lightning runs ModelCheckpoint after the other callbacks: epoch 0's metrics can be in
        # MLflow before its last.ckpt is on disk, so wait for both
        while not (
            list(project.glob("checkpoints/*/last.ckpt"))
            and runs_of(tracking_server, experiment)
            and history(tracking_server, runs_of(tracking_server, experiment)[0].info.run_id, "val/acc")
        ):
            assert time.monotonic() < deadline and first.poll() is None, "first epoch never finished"
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)  # like a node failure: no chance to clean up
        first.wait()
    [interrupted] = runs_of(tracking_server, experiment)
    assert interrupted.info.status == "RUNNING"
    second = subprocess.run(args, cwd=project, env=environment(tracking_server), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "Restoring states from the checkpoint" in second.stderr
    [run] = runs_of(tracking_server, experiment)
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert [step for step, _ in history(tracking_server, run.info.run_id, "val/acc")] == [0, 1, 2]


def test_a_bad_value_stops_before_any_run_or_checkpoint_exists(project, tracking_server, experiment):
    done = hpcsweep(["train", *overrides("lr=-1", f"tracking.experiment={experiment}")], project, tracking_server)
    assert done.returncode == 1
    assert done.stderr == "Error: -s: train.lr=-1: must be > 0\n"
    assert runs_of(tracking_server, experiment) == []
    assert not (project / "checkpoints").exists()


def test_training_before_prepare_says_what_to_run(project, tracking_server, experiment):
    done = hpcsweep(["train", *overrides(f"tracking.experiment={experiment}")], project, tracking_server)
    assert done.returncode == 1 and "run `hpcsweep prepare` first" in done.stderr
    assert runs_of(tracking_server, experiment) == []


def test_system_metrics_of_the_node_land_in_the_run_when_asked(prepared, tracking_server, experiment):
    project = prepared.parent.parent
    args = [
        sys.executable,
        "-m",
        "hpcsweep",
        "train",
        *overrides(
            *QUICK,
            "max_epochs=2",
            "batch_size=10",
            "base_batch_size=10",
            "tracking.system_metrics=true",
            f"tracking.experiment={experiment}",
        ),
    ]
    env = environment(tracking_server, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics

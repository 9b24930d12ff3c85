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

from helpers.project import ROOT, commit_all
from helpers.runs import QUICK, environment, history, hpcsweep, overrides, runs_of

pytestmark = pytest.mark.slow


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_mlflow_run_trains_into_exactly_one_complete_run(prepared, tracking_server, experiment):
    project = prepared.parent.parent
    for name in ("MLproject", "python_env.yaml"):
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
        "max_epochs=2.0",  # MLflow has no integer type: a float spelling must do
        "-P",
        "nesterov=false",  # as typed here; autologging would log False
        "-P",
        f"checkpoint_dir={project / 'runs'}",
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
        "-P",
        "target_accuracy=0.01",  # reached at the first epoch: time_to_target_s is logged there
    ]
    done = subprocess.run(command, cwd=project, env=environment(tracking_server), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    assert run.info.status == "FINISHED"
    params = run.data.params
    # every write went through the run folder's spool and none was refused: autologging's params
    # (the optimizer's settings, `epochs`) beside mlflow run's `lr=1e-3`, as typed
    folder = project / "runs" / run.info.run_id  # -P checkpoint_dir
    assert folder.is_dir() and not (folder / "mlflow-spool.rejected").exists()
    assert (params["lr"], params["nesterov"], params["max_epochs"]) == ("1e-3", "false", "2.0")
    assert (params["epochs"], params["optimizer_name"], params["eps"]) == ("2", "Adam", "1e-08")
    assert params["optimizer"] == "adam" and params["batch_size"] == "60" and params["model"] == "resnet20"
    assert [step for step, _ in history(tracking_server, run.info.run_id, "val/acc")] == [0, 1]
    assert history(tracking_server, run.info.run_id, "time_to_target_s")[0][0] == 0
    assert params["precision"] == "auto" and params["precision_used"] == "32-true"  # auto on the CPU
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


def quick_training(prepared: Path, uri: str, experiment: str, *keys: str):
    """`hpcsweep train` of the QUICK config with `keys` in the project of `prepared`; its one run."""
    args = ["train", *overrides(*QUICK, *keys, f"tracking.experiment={experiment}")]
    done = hpcsweep(args, prepared.parent.parent, uri)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(uri, experiment)
    return run


def test_ddp_on_two_cpu_processes_is_one_run_over_disjoint_shards(prepared, tracking_server, experiment):
    run = quick_training(prepared, tracking_server, experiment, "max_epochs=2", "strategy=ddp", "devices=2")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["micro_batch_size"] == 30  # 60 over 2 ranks
    assert history(tracking_server, run.info.run_id, "train/repeated_samples") == [(0, 0.0), (1, 0.0)]
    # 250 training images: each rank's 125 give 4 micro-batches of 30, the last 5 dropped
    assert history(tracking_server, run.info.run_id, "train/unique_samples") == [(0, 240.0), (1, 240.0)]


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


def test_training_before_prepare_says_what_to_run_before_importing_lightning_or_mlflow(
    project, tracking_server, experiment
):
    """Importing them takes ~10 s: the checks that need neither answer first (training/preflight.py)."""
    check = (
        "import sys\n"
        "from hpcsweep.cli import main\n"
        "try:\n"
        f"    main(['train', '-s', 'tracking.experiment={experiment}'], prog_name='hpcsweep')\n"
        "except SystemExit as exit:\n"
        "    assert not {'lightning', 'mlflow'} & set(sys.modules), 'imported before the checks'\n"
        "    raise\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=project, env=environment(tracking_server), capture_output=True, text=True
    )
    assert done.returncode == 1 and "run `hpcsweep prepare` first" in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert runs_of(tracking_server, experiment) == []


# what mlflow.system_metrics' CPU, disk and network monitors log on any node, and its GPU monitor per GPU
NODE_METRICS = {
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "disk_usage_percentage",
    "disk_usage_megabytes",
    "disk_available_megabytes",
    "network_receive_megabytes",
    "network_transmit_megabytes",
}
GPU_METRICS = ("memory_usage_percentage", "memory_usage_megabytes", "utilization_percentage")


def nvml_gpu_count() -> int:
    """The GPUs MLflow's GPU monitor sees: through pynvml (nvidia-ml-py), none where NVML cannot load."""
    import pynvml

    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return 0


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
            "limit_train_samples=60",  # 2 x 6 steps: about 2 s on a fast machine
            "tracking.system_metrics=true",
            f"tracking.experiment={experiment}",
        ),
    ]
    # sampled every 0.2 s, so that even a 2 s training gives several samples (at 1 s a fast machine gave one)
    env = environment(tracking_server, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2")
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    system = {
        key.removeprefix("system/"): value for key, value in run.data.metrics.items() if key.startswith("system/")
    }
    assert NODE_METRICS <= set(system), NODE_METRICS - set(system)
    gpu_keys = {key for key in system if key.startswith("gpu_")}
    assert gpu_keys >= {f"gpu_{i}_{name}" for i in range(nvml_gpu_count()) for name in GPU_METRICS}
    assert bool(gpu_keys) == (nvml_gpu_count() > 0), gpu_keys  # no GPU: no GPU keys, rather than zeros
    for name in ("cpu_utilization_percentage", "system_memory_usage_percentage", "disk_usage_percentage"):
        assert 0 <= system[name] <= 100, (name, system[name])
    assert 0 < system["system_memory_usage_megabytes"] and 0 < system["disk_available_megabytes"]
    assert len(history(tracking_server, run.info.run_id, "system/cpu_utilization_percentage")) > 1  # sampled, not once


def test_after_a_finished_run_the_same_command_starts_a_fresh_run_tagged_with_the_commit(
    prepared, tracking_server, experiment
):
    """Two trainings with one command in a git work tree: the second is a run of its own, not a resume
    of the first; git_commit is the commit, with `-dirty` once a tracked file differs from it."""
    project = prepared.parent.parent
    (project / "notes.md").write_text("a tracked file\n")
    commit = commit_all(project, "params.yaml", "notes.md")
    args = ["train", *overrides(*QUICK, "limit_train_samples=60", f"tracking.experiment={experiment}")]
    first = hpcsweep(args, project, tracking_server)
    assert first.returncode == 0, first.stderr[-4000:]
    [finished] = runs_of(tracking_server, experiment)
    assert finished.data.tags["git_commit"] == commit
    folder = project / "checkpoints" / finished.data.tags["config_hash"]  # no launcher's run id: the config's hash
    assert (folder / "last.ckpt").is_file()

    (project / "notes.md").write_text("changed after the commit\n")
    second = hpcsweep(args, project, tracking_server)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "Restoring states from the checkpoint" not in second.stderr and (folder / "last.ckpt").is_file()
    runs = {run.info.run_id: run for run in runs_of(tracking_server, experiment)}
    [fresh] = [run for run_id, run in runs.items() if run_id != finished.info.run_id]
    assert len(runs) == 2 and {run.info.status for run in runs.values()} == {"FINISHED"}
    assert fresh.data.tags["git_commit"] == f"{commit}-dirty"
    for run_id in runs:
        assert [step for step, _ in history(tracking_server, run_id, "val/acc")] == [0], run_id  # one epoch each


def test_training_through_the_torchvision_dataloader_finishes_into_a_run(prepared, tracking_server, experiment):
    keys = ("limit_train_samples=120", "data.loader=torchvision", "tracking.log_model=false")
    run = quick_training(prepared, tracking_server, experiment, *keys)
    assert run.info.status == "FINISHED" and run.data.params["loader"] == "torchvision"
    assert not run.outputs.model_outputs  # tracking.log_model=false: the checkpoints only
    assert [step for step, _ in history(tracking_server, run.info.run_id, "val/acc")] == [0]
    assert run.data.metrics["train/images_per_s"] > 0 and "train/loss" in run.data.metrics
    # the coverage proof counts what the device loader served; the DataLoader has no such record
    assert "train/unique_samples" not in run.data.metrics

"""`hpcsweep grid --dry-run` estimates a grid's device-hours from earlier finished runs on the
tracking server, names them GPU- or CPU-hours, says which points it has nothing to go on for, and
carries on in one line when the server is away."""

from __future__ import annotations

import os

import mlflow
import pytest
from click.testing import CliRunner

from helpers.runs import write_grid
from helpers.services import free_port
from hpcsweep.cli import main
from hpcsweep.grid.cost import PastRun, Setting, Work, point_device_hours
from hpcsweep.tracking.tags import DEVICE_TYPE

# batch sizes no other test trains at: the estimate searches every experiment of the shared server
BATCH, UNSEEN_BATCH = 173, 347
GRID = {
    "base": {"model": "resnet20", "precision": "32-true", "limit_train_samples": 100, "warmup_epochs": 0},
    "grid": {"accelerator": ["cpu", "gpu"], "batch_size": [BATCH, UNSEEN_BATCH], "max_epochs": [2, 4]},
}


def log_run(client, experiment, device_type, total_time_s, epochs, limit, devices=1, status="FINISHED"):
    """A finished training as the server holds it: its params, device tag and total_time_s."""
    run = client.create_run(experiment, tags={DEVICE_TYPE: device_type})
    params = {"model": "resnet20", "batch_size": BATCH, "precision": "32-true", "max_epochs": epochs}
    params.update(limit_train_samples=limit, devices=devices, num_nodes=1)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "total_time_s", total_time_s)
    client.set_terminated(run.info.run_id, status)


def dry_run(project, grid, uri):
    arguments = ["grid", str(grid), "--dry-run", "--params", str(project / "params.yaml"), "-s", f"tracking.uri={uri}"]
    return CliRunner().invoke(main, arguments)


@pytest.mark.slow
def test_a_dry_run_estimates_device_hours_from_earlier_runs_of_the_same_setting(prepared, tracking_server, monkeypatch):
    project = prepared.parent.parent
    monkeypatch.chdir(project)
    client = mlflow.MlflowClient(tracking_server)
    cpu_runs, gpu_runs = (client.create_experiment(f"cost{os.getpid()}-{kind}") for kind in ("cpu", "gpu"))
    # seconds per image of one epoch: 90/(3x150) = 0.2, 30/(1x100) = 0.3, 40/(2x25) = 0.8: median 0.3
    log_run(client, cpu_runs, "CPU", 90, epochs=3, limit=150)
    log_run(client, cpu_runs, "CPU", 30, epochs=1, limit=100)
    log_run(client, cpu_runs, "CPU", 40, epochs=2, limit=25)
    log_run(client, cpu_runs, "CPU", 4000, epochs=1, limit=100, status="FAILED")  # never counted
    log_run(client, cpu_runs, "CPU", 4000, epochs=1, limit=100, status="KILLED")  # a pruned run neither
    # on 2 GPUs: 12 s x 2 devices / (2 x 100) = 0.12 device-seconds per image, in another experiment
    log_run(client, gpu_runs, "GPU", 12, epochs=2, limit=100, devices=2)
    grid = write_grid(project, {"name": f"cost{os.getpid()}", **GRID})

    done = dry_run(project, grid, tracking_server)

    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].startswith(f"cost{os.getpid()}: 8 points in 2 job array(s); dry run")  # the dry run as before
    estimate = lines[next(number for number, line in enumerate(lines) if line.startswith("cost estimate")) :]
    # CPU: 0.3 s x (2 + 4) epochs x 100 images = 180 s; GPU: 0.12 x 600 = 72 device-seconds
    setting = f"model=resnet20, batch_size={BATCH}, precision=32-true"
    unseen = f"  no earlier runs of model=resnet20, batch_size={UNSEEN_BATCH}, precision=32-true"
    assert estimate[0].startswith("cost estimate: 0.05 CPU-hours + 0.02 GPU-hours for 4 of 8 points, ")
    assert estimate[1].startswith(f"  {setting}, on CPU: 0.05 CPU-hours for 2 points (from 3 earlier runs")
    assert estimate[2] == f"{unseen}, on CPU: no estimate for 2 of 8 points"
    assert estimate[3].startswith(f"  {setting}, on GPU: 0.02 GPU-hours for 2 points (from 1 earlier run:")
    assert estimate[4] == f"{unseen}, on GPU: no estimate for 2 of 8 points"
    assert len(estimate) == 5


def test_a_point_is_estimated_from_the_runs_on_as_many_devices_when_there_are_some():
    setting = Setting("resnet20", 512, "auto", "GPU")
    history = [PastRun(1.0, devices=1), PastRun(2.0, devices=4), PastRun(4.0, devices=4)]
    assert point_device_hours(Work(setting, epochs=10, images=360, devices=4), history) == 3.0  # 4 devices: median 3.0
    assert point_device_hours(Work(setting, epochs=10, images=360, devices=8), history) == 2.0  # all: median 2.0


def test_a_dry_run_says_in_one_line_that_the_server_does_not_answer_and_finishes(prepared, monkeypatch):
    project = prepared.parent.parent
    monkeypatch.chdir(project)
    port = free_port()  # nothing listens there
    grid = write_grid(project, {"name": f"costaway{os.getpid()}", **GRID})

    done = dry_run(project, grid, f"http://127.0.0.1:{port}")

    assert done.exit_code == 0, done.output
    [line] = [line for line in done.output.splitlines() if line.startswith("cost estimate")]
    assert line.startswith(f"cost estimate: none, tracking server http://127.0.0.1:{port} does not answer (")
    assert done.output.splitlines()[-1] == line and "points: " in done.output  # the dry run's files, then this

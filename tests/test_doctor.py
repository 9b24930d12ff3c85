"""`hpcsweep doctor` and the job-start check, for real on this machine (no GPU) and on a GPU when one is lent.

The doctor runs in-process through click's runner (torch and MLflow are imported once, not per
test); `hpcsweep train` runs as a user runs it, a subprocess, to time it and to see that no MLflow
run was made.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from helpers.runs import environment, overrides, runs_of
from helpers.synthetic import VAL_SIZE
from hpcsweep.cli import main
from hpcsweep.telemetry import DEFAULTS

ON_A_CPU_MACHINE = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU gets")


@pytest.fixture(autouse=True)
def telemetry_left_as_it_was(monkeypatch):
    """The CLI sets these in the process it runs in; here that is pytest's, so monkeypatch restores them."""
    for name, value in DEFAULTS.items():
        monkeypatch.setenv(name, value)


def sqlite_uri(project) -> str:
    return f"sqlite:///{project}/mlflow.db"


def doctor(project, *assignments: str):
    """`hpcsweep doctor` on the project's params, its local store named so that no server is asked."""
    arguments = ["doctor", "--params", str(project / "params.yaml")]
    return CliRunner().invoke(main, [*arguments, *overrides(f"tracking.uri={sqlite_uri(project)}", *assignments)])


def problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("problem: ")]


@ON_A_CPU_MACHINE
def test_a_cpu_machine_with_prepared_data_is_ready(prepared):
    done = doctor(prepared.parent.parent)
    assert done.exit_code == 0, done.output
    assert problems(done.output) == []
    lines = done.output.splitlines()
    assert lines[0].startswith(f"torch: {torch.__version__} (kernels for ")
    for expected in ("CUDA: ", "cuDNN: ", "NCCL: ", "GPU: no CUDA GPU visible", "slurm: "):
        assert any(line.startswith(expected) for line in lines), (expected, done.output)
    assert "training: accelerator=auto, precision=auto (32-true here), devices=1" in lines
    assert f"tracking: local store {sqlite_uri(prepared.parent.parent)}" in lines
    assert f"prepared data: {prepared} (" in done.output


@ON_A_CPU_MACHINE
def test_asking_for_a_gpu_where_there_is_none_is_a_problem_with_its_fix(prepared):
    done = doctor(prepared.parent.parent, "accelerator=gpu")
    assert done.exit_code == 1, done.output
    [problem] = problems(done.output)
    assert problem.startswith("problem: accelerator=gpu but no CUDA GPU is visible")
    assert problem.endswith("or set accelerator=auto or cpu")


def test_missing_prepared_data_is_a_problem_with_its_fix(project):
    done = doctor(project)
    assert done.exit_code == 1, done.output
    [problem] = problems(done.output)
    stats = project / "data/prepared/stats.json"
    assert problem == f"problem: {stats}: not found; run `hpcsweep prepare` first (or set data.prepared_dir)"


def test_data_prepared_with_another_val_size_is_a_problem_with_its_fix(prepared):
    done = doctor(prepared.parent.parent, "accelerator=cpu", "data.val_size=7")
    assert done.exit_code == 1, done.output
    [problem] = problems(done.output)
    assert problem == (
        f"problem: data.val_size=7 but {prepared} was prepared with {VAL_SIZE}; "
        "run `hpcsweep prepare` again (dvc repro prepare)"
    )


def test_a_tracking_server_that_does_not_answer_is_a_problem(prepared):
    with socket.socket() as probe:  # a port nothing listens on: taken, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = doctor(prepared.parent.parent, "accelerator=cpu", f"tracking.uri=http://127.0.0.1:{port}")
    assert done.exit_code == 1, done.output
    [problem] = problems(done.output)
    assert problem.startswith(f"problem: tracking server http://127.0.0.1:{port} does not answer")


@pytest.mark.slow
def test_a_tracking_server_that_answers_is_no_problem(prepared, tracking_server):
    done = doctor(prepared.parent.parent, "accelerator=cpu", f"tracking.uri={tracking_server}")
    assert done.exit_code == 0, done.output
    assert f"tracking: server {tracking_server} answers" in done.output


@pytest.mark.slow  # about 20 s here, nearly all of it importing Lightning, torch and MLflow
@ON_A_CPU_MACHINE
def test_a_gpu_training_here_fails_in_seconds_in_one_line_before_any_run_exists(prepared):
    project = prepared.parent.parent
    uri, experiment = sqlite_uri(project), "no-gpu-here"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "train", *overrides("accelerator=gpu", f"tracking.experiment={experiment}")],
        cwd=project,
        env=environment(uri),
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith("Error: accelerator=gpu but no CUDA GPU is visible"), done.stderr[-3000:]
    assert done.stderr.count("\n") == 1  # one line, no traceback
    assert elapsed < 60, elapsed  # the imports, then the check: no Trainer, no model, no run
    assert not (project / "mlflow.db").exists() or runs_of(uri, experiment) == []
    assert not (project / "checkpoints").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_doctor_on_a_gpu_names_it_and_finds_nothing_wrong(prepared):
    project = prepared.parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcsweep",
            "doctor",
            *overrides("accelerator=gpu", f"tracking.uri={sqlite_uri(project)}"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"GPU 0: {torch.cuda.get_device_name(0)}, " in done.stdout

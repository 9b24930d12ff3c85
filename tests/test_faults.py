"""Fault injection: a training SIGKILLed again and again, its tracking server too, loses and repeats nothing.

The figure docs/reliability.md quotes comes from this test: at least 10 kills of one training (at
random moments, during checkpoint writes, during spool appends), two crashes of the server, and
at the end one FINISHED run with every epoch's figures exactly once and a last checkpoint that
loads. The kill schedule is drawn from a seed printed with each attempt, so a failure replays.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid

import mlflow
import pytest
import torch

from helpers.faults import kill_at, kill_hook
from helpers.runs import QUICK, environment, overrides, runs_of

pytestmark = [pytest.mark.server, pytest.mark.slow]

EPOCHS = 30  # the ten attempts get through ~15-25 of them, so the last attempt still has epochs to train
KILLS = 10
FIGURES = ("train/loss", "val/loss", "val/acc")


def training(project, uri: str, experiment: str, attempt: int, extra: dict[str, str]) -> subprocess.Popen:
    hooks = kill_hook(project / "kill-hook")
    command = [
        sys.executable,
        "-m",
        "hpcsweep",
        "train",
        *overrides(*QUICK, f"max_epochs={EPOCHS}", f"tracking.experiment={experiment}"),
    ]
    env = environment(uri, PYTHONPATH=f"{hooks}:{os.environ.get('PYTHONPATH', '')}", **extra)
    log = open(project / f"attempt-{attempt}.log", "w")
    return subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def started(project, attempt: int) -> bool:
    """The attempt is training: it has printed an epoch line."""
    return re.search(r"^epoch \d+/", (project / f"attempt-{attempt}.log").read_text(), re.MULTILINE) is not None


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_training_killed_ten_times_and_its_server_twice_logs_every_epoch_exactly_once(prepared, shared_server):
    project, experiment = prepared.parent.parent, f"faults-{uuid.uuid4().hex[:8]}"
    seed = int(os.environ.get("HPCSWEEP_FAULT_SEED", time.time()))
    rng = random.Random(seed)
    kills = 0
    while kills < KILLS:
        way = ("at a random moment", "during a checkpoint write", "during a spool append", "with the server down")[
            kills % 4
        ]
        extra = {}
        if way == "during a checkpoint write":  # last.ckpt and best.ckpt are written each epoch
            extra = kill_at(".ckpt.", rng.randint(1, 3), rng.uniform(0, 5))
        elif way == "during a spool append":
            extra = kill_at("mlflow-spool.jsonl", rng.randint(2, 8), rng.uniform(0, 1))  # ~1.5 appends an epoch
        print(f"seed {seed}, attempt {kills + 1}: killed {way} {extra}")
        process = training(project, shared_server.uri, experiment, kills, extra)
        if way == "at a random moment":
            time.sleep(rng.uniform(3, 10))
            process.kill()
        elif way == "with the server down":
            wait_for(lambda: started(project, kills) or process.poll() is not None, 300, "the attempt to start")
            shared_server.stop(crash=True)
            time.sleep(rng.uniform(2, 6))
            process.kill()
            shared_server.start()
        code = process.wait(timeout=600)
        assert code == -9, (project / f"attempt-{kills}.log").read_text()[-3000:]
        kills += 1

    final = training(project, shared_server.uri, experiment, kills, {})
    assert final.wait(timeout=900) == 0, (project / f"attempt-{kills}.log").read_text()[-3000:]
    [run] = runs_of(shared_server.uri, experiment)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(shared_server.uri)
    for key in FIGURES:
        steps = sorted(point.step for point in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), f"{key}: lost {set(range(EPOCHS)) - set(steps)}, steps {steps}"
    [folder] = (project / "checkpoints").iterdir()
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == EPOCHS - 1
    assert not list(folder.glob(".*.ckpt.*.tmp")), "a killed checkpoint write left its temporary behind"

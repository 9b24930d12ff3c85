"""Large batches without out-of-memory: accumulation is exact, `auto` fits the budget, OOM is survived."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
import torch
from torch import nn

from helpers.runs import QUICK, environment, overrides, runs_of
from helpers.synthetic import write_archive
from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.models import build_model
from hpcsweep.training.batch_plan import plan_batches
from hpcsweep.training.module import ResNetModule, share_of_batch_loss
from hpcsweep.training.probe import candidates, probe_micro_batch
from hpcsweep.training.train import train

torch.manual_seed(0)


def gradients_with_micro_batches(model: nn.Module, images, labels, micro: int) -> list[torch.Tensor]:
    model.zero_grad()
    for start in range(0, len(labels), micro):
        share_of_batch_loss(model, images[start : start + micro], labels[start : start + micro], len(labels)).backward()
    return [p.grad.clone() for p in model.parameters()]


def batch(size: int = 32):
    return torch.randn(size, 3, 32, 32), torch.randint(0, 10, (size,))


def test_accumulated_micro_batches_give_the_whole_batch_gradient_without_batch_statistics():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
    images, labels = batch()
    whole = gradients_with_micro_batches(model, images, labels, micro=32)
    for micro in (16, 8, 1):
        for g_whole, g_micro in zip(whole, gradients_with_micro_batches(model, images, labels, micro)):
            torch.testing.assert_close(g_micro, g_whole, rtol=1e-4, atol=1e-6)


def test_resnet20_with_eval_mode_batchnorm_accumulates_exactly():
    model = build_model("resnet20").eval()  # BatchNorm uses its running statistics
    images, labels = batch()
    whole = gradients_with_micro_batches(model, images, labels, micro=32)
    for g_whole, g_micro in zip(whole, gradients_with_micro_batches(model, images, labels, micro=8)):
        torch.testing.assert_close(g_micro, g_whole, rtol=1e-3, atol=1e-5)


def test_train_mode_batchnorm_makes_micro_batches_differ():
    """Documented, not a bug: in train mode BatchNorm normalises each micro-batch with its own
    mean and variance, so 4 x 8 is not 1 x 32; the effective batch is kept, the statistics are
    a micro-batch's. This is the one way in which accumulation changes training."""
    model = build_model("resnet20").train()
    images, labels = batch()
    whole = gradients_with_micro_batches(model, images, labels, micro=32)
    micro = gradients_with_micro_batches(model, images, labels, micro=8)
    difference = max(float((a - b).abs().max() / (a.abs().max() + 1e-12)) for a, b in zip(whole, micro))
    assert difference > 1e-3


def test_candidates_are_divisors_largest_first_and_the_plan_keeps_the_effective_batch():
    assert candidates(96) == [96, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    plan = plan_batches(batch_size=4096, world_size=8, micro_batch_size=128)
    assert plan.per_rank_batch_size == 512 and plan.accumulate_grad_batches == 4
    assert plan.micro_batch_size * plan.accumulate_grad_batches * plan.world_size == 4096


def fresh(model_name: str = "resnet20"):
    def build():
        model = build_model(model_name).to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    return build


def test_cpu_probe_picks_the_largest_micro_batch_within_the_budget():
    unlimited = probe_micro_batch(fresh(), torch.device("cpu"), 64, "32-true", None, 0.1)
    assert unlimited.micro_batch_size == 64 and unlimited.budget_mb is None
    budget = unlimited.step_memory_mb * 0.6  # 64 cannot fit, 32 (about half the activations) can
    limited = probe_micro_batch(fresh(), torch.device("cpu"), 64, "32-true", round(budget / 0.9), 0.1)
    assert limited.micro_batch_size == 32
    assert limited.step_memory_mb <= limited.budget_mb < unlimited.step_memory_mb


def test_a_limit_below_micro_batch_one_is_a_clear_error():
    with pytest.raises(UserError, match=r"memory_limit_mb=1: even micro_batch_size=1 needs \d+ MB"):
        probe_micro_batch(fresh(), torch.device("cpu"), 8, "32-true", 1, 0.1)


@pytest.fixture
def prepared_600(project):
    """600 training images, so one step of an effective batch of 512 exists."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    archive = write_archive(project / "archive600.tar.gz", per_batch=120)
    import_archive(archive, project / "data/raw")
    prepare(project / "data/raw", project / "data/prepared")
    return project


def config_for(project, *assignments: str):
    return load_config(
        project / "params.yaml",
        [
            *QUICK,
            "batch_size=512",
            "base_batch_size=512",
            f"tracking.checkpoint_dir={project / 'checkpoints'}",
            *assignments,
        ],
    )


@pytest.mark.slow
def test_auto_under_a_memory_limit_accumulates_to_the_effective_batch(prepared_600, tracking_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    result = train(config_for(prepared_600, "memory_limit_mb=300", "tracking.experiment=auto-limit"))
    assert result.status == "FINISHED"
    assert result.micro_batch_size < 512 and result.micro_batch_size * result.accumulate_grad_batches == 512
    run = mlflow.MlflowClient(tracking_server).get_run(result.run_id)
    assert run.data.metrics["effective_batch_size"] == 512
    assert run.data.metrics["micro_batch_size"] == result.micro_batch_size
    assert run.data.metrics["accumulate_grad_batches"] == result.accumulate_grad_batches
    assert run.data.metrics["step_memory_mb"] <= 300 * 0.9 and run.data.metrics["probe_time_s"] > 0


@pytest.mark.slow
def test_ddp_ranks_probe_and_agree_on_one_micro_batch(prepared_600, tracking_server):
    args = [
        "train",
        *overrides(
            *QUICK,
            "batch_size=512",
            "base_batch_size=512",
            "strategy=ddp",
            "devices=2",
            "memory_limit_mb=200",
            "tracking.experiment=auto-ddp",
        ),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", *args],
        cwd=prepared_600,
        env=environment(tracking_server),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, "auto-ddp")
    metrics = run.data.metrics
    assert metrics["probe_min_micro_batch_size"] == metrics["probe_max_micro_batch_size"] == metrics["micro_batch_size"]
    assert metrics["micro_batch_size"] < 256  # the per-rank batch did not fit in 200 MB
    assert metrics["micro_batch_size"] * metrics["accumulate_grad_batches"] == 256
    assert metrics["effective_batch_size"] == 512


@pytest.mark.slow
def test_an_out_of_memory_mid_epoch_halves_the_micro_batch_and_reruns_the_same_step(prepared, monkeypatch, tmp_path):
    """CPU training cannot run out of memory for real (the kernel kills it), so the fault is injected."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_backward = ResNetModule.backward_micro_batch
    calls = {"count": 0}

    def fail_in_the_middle_of_the_third_step(self, images, labels, last):
        calls["count"] += 1
        if calls["count"] == 8:  # 3 micro-batches of 20 per step: the 2nd of step 3
            raise torch.OutOfMemoryError("injected by the test")
        return real_backward(self, images, labels, last)

    monkeypatch.setattr(ResNetModule, "backward_micro_batch", fail_in_the_middle_of_the_third_step)
    project = prepared.parent.parent
    config = load_config(
        project / "params.yaml",
        [*QUICK, "max_epochs=2", "micro_batch_size=20", f"tracking.checkpoint_dir={tmp_path / 'checkpoints'}"],
    )
    result = train(config)
    assert result.status == "FINISHED" and result.oom_retries == 1
    assert result.micro_batch_size == 10 and result.accumulate_grad_batches == 6
    assert result.effective_batch_size == 60 and result.steps == 10  # 2 epochs of 300 / 60: no step lost
    client = mlflow.MlflowClient()
    steps = [m.value for m in client.get_metric_history(result.run_id, "micro_batch_size")]
    assert steps == [10.0, 10.0]  # the epoch ended with the halved micro-batch


@pytest.mark.parametrize(
    ("assignments", "expected"),
    [
        (["micro_batch_size=256", "batch_size=128"], "micro_batch_size=256 must divide the per-rank batch 128"),
        (["micro_batch_size=0"], "micro_batch_size=0: must be >= 1"),
        (["micro_batch_size=-4"], "micro_batch_size=-4: must be >= 1"),
        (["micro_batch_size=48", "batch_size=128"], "valid nearby: 8, 16, 32, 64"),
        (["batch_size=100", "strategy=ddp", "devices=8"], "valid nearby: 96, 104"),
    ],
)
def test_bad_batch_values_name_what_would_work(assignments, expected, project):
    with pytest.raises(UserError) as error:
        load_config(project / "params.yaml", assignments)
    assert expected in str(error.value)


@pytest.mark.slow
def test_cli_memory_limit_below_micro_batch_one_exits_with_one_line(prepared, tmp_path):
    project = prepared.parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "train", *overrides(*QUICK, "memory_limit_mb=1")],
        cwd=project,
        env=environment(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("Error: train.memory_limit_mb=1: even micro_batch_size=1 needs")
    assert "Traceback" not in done.stderr

"""Large batches without out-of-memory: accumulation is exact, `auto` fits the budget, OOM is
survived, under DDP by all ranks together."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from torch import nn

from helpers.ddp_training import MEMORY_LIMITS, OOM_AT, ddp_training_command
from helpers.gloo import gradients_by_ddp_and_by_exchange, run_on_ranks
from helpers.lightning_fit import fit, learnable_batch, module_for
from helpers.project import ROOT
from helpers.runs import QUICK, environment, overrides, runs_of
from helpers.synthetic import VAL_SIZE, write_archive
from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.grid.spec import load_grid
from hpcsweep.models import build_model
from hpcsweep.training.batch_plan import plan_batches
from hpcsweep.training.mixed_precision import precision_plugin
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


def test_a_limit_below_micro_batch_one_is_a_clear_error_found_without_trying_larger_ones():
    builds = []

    def counted():
        builds.append(1)
        return fresh()()

    with pytest.raises(UserError, match=r"memory_limit_mb=1: even micro_batch_size=1 needs \d+ MB"):
        probe_micro_batch(counted, torch.device("cpu"), 8, "32-true", 1, 0.1)
    assert len(builds) == 1  # micro-batch 1 only: 8, 4 and 2 would need more still


def test_a_budget_only_micro_batch_one_fits_probes_it_once_and_keeps_it():
    one = probe_micro_batch(fresh(), torch.device("cpu"), 1, "32-true", None, 0.1).step_memory_mb
    probe = probe_micro_batch(fresh(), torch.device("cpu"), 8, "32-true", round(one * 1.05 / 0.9), 0.1)
    assert (probe.micro_batch_size, probe.step_memory_mb) == (1, pytest.approx(one, abs=0.1))


@pytest.fixture
def prepared_600(project):
    """600 training images (550 after the validation split), so one step of an effective batch of 512 exists."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    archive = write_archive(project / "archive600.tar.gz", per_batch=120)
    import_archive(archive, project / "data/raw")
    prepare(project / "data/raw", project / "data/prepared", VAL_SIZE)
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
def test_ddp_ranks_probe_and_agree_on_the_smallest_micro_batch(prepared_600, tracking_server, tmp_path):
    """Ranks with different memory (injected: ranks of one machine share it) probe different
    micro-batches; both must train with the smallest, or the smaller rank runs out of memory."""
    settings = [*QUICK, "batch_size=512", "base_batch_size=512", "tracking.experiment=auto-ddp"]
    # 180 and 225 MB budgets: a step of 128 needs about 190 MB, one of 64 about 100 MB
    ranks = train_on_two_ranks(prepared_600, tracking_server, tmp_path / "out", *settings, **{MEMORY_LIMITS: "250,200"})
    for result in ranks:
        assert result["status"] == "FINISHED"
        assert (result["probe_min_micro_batch_size"], result["probe_max_micro_batch_size"]) == (64, 128)
        assert result["micro_batch_size"] == 64 and result["accumulate_grad_batches"] == 4
    [run] = runs_of(tracking_server, "auto-ddp")
    metrics = run.data.metrics
    assert metrics["probe_min_micro_batch_size"] == metrics["micro_batch_size"] == 64
    assert metrics["probe_max_micro_batch_size"] == 128
    assert metrics["micro_batch_size"] * metrics["accumulate_grad_batches"] == 256
    assert metrics["effective_batch_size"] == 512


@pytest.mark.slow
def test_an_out_of_memory_mid_epoch_halves_the_micro_batch_and_reruns_the_same_step(prepared, monkeypatch, tmp_path):
    """CPU training cannot run out of memory for real (the kernel kills it), so the fault is injected."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_backward = ResNetModule.backward_micro_batch
    calls = {"count": 0}

    def fail_in_the_middle_of_the_third_step(self, images, labels):
        calls["count"] += 1
        if calls["count"] == 8:  # 3 micro-batches of 20 per step: the 2nd of step 3
            raise torch.OutOfMemoryError("injected by the test")
        return real_backward(self, images, labels)

    monkeypatch.setattr(ResNetModule, "backward_micro_batch", fail_in_the_middle_of_the_third_step)
    project = prepared.parent.parent
    config = load_config(
        project / "params.yaml",
        [*QUICK, "max_epochs=2", "micro_batch_size=20", f"tracking.checkpoint_dir={tmp_path / 'checkpoints'}"],
    )
    result = train(config)
    assert result.status == "FINISHED" and result.oom_retries == 1
    assert result.micro_batch_size == 10 and result.accumulate_grad_batches == 6
    assert result.effective_batch_size == 60 and result.steps == 8  # 2 epochs of 250 // 60: no step lost
    client = mlflow.MlflowClient()
    steps = [m.value for m in client.get_metric_history(result.run_id, "micro_batch_size")]
    assert steps == [10.0, 10.0]  # the epoch ended with the halved micro-batch


def test_a_rerun_step_is_exactly_the_step_the_smaller_micro_batch_takes(project, monkeypatch):
    """Out of memory after the last micro-batch's backward (its gradients already accumulated):
    the step rerun at micro-batch 4 leaves weights, BatchNorm statistics and counters exactly as a
    step run at 4 from the start does, so nothing of the failed attempt leaks into training."""
    images, labels = learnable_batch(16)
    settings = ("batch_size=16", "base_batch_size=16", "precision=32-true", "scheduler=constant")
    clean = module_for(project, *settings, "micro_batch_size=4")
    fit(clean, images, labels, steps=1, plugin=precision_plugin("32-true", "cpu"))

    real_backward = ResNetModule.backward_micro_batch
    calls = {"count": 0}

    def run_out_after_the_second_backward(self, images, labels):  # injected: a CPU cannot run out
        loss = real_backward(self, images, labels)
        calls["count"] += 1
        if calls["count"] == 2:
            raise torch.OutOfMemoryError("injected by the test")
        return loss

    monkeypatch.setattr(ResNetModule, "backward_micro_batch", run_out_after_the_second_backward)
    rerun = module_for(project, *settings, "micro_batch_size=8")
    fit(rerun, images, labels, steps=1, plugin=precision_plugin("32-true", "cpu"))
    assert rerun.oom_retries == 1 and rerun.micro_batch_size == 4 and calls["count"] == 2 + 4
    expected = clean.state_dict()
    for name, value in rerun.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_out_of_memory_in_validation_halves_only_this_ranks_validation_micro_batch(project, monkeypatch):
    """Validation runs no collective between micro-batches, so a rank may halve its own; the
    training micro-batch, which all ranks share, stays as it was."""
    real_forward = ResNetModule.forward
    calls = {"validation": 0}

    def run_out_in_the_first_validation_forward(self, images):  # injected: a CPU cannot run out
        if not self.training:
            calls["validation"] += 1
            if calls["validation"] == 1:
                raise torch.OutOfMemoryError("injected by the test")
        return real_forward(self, images)

    monkeypatch.setattr(ResNetModule, "forward", run_out_in_the_first_validation_forward)
    images, labels = learnable_batch(16)
    module = module_for(project, "batch_size=16", "base_batch_size=16", "precision=32-true", "micro_batch_size=8")
    trainer = fit(module, images, labels, steps=1, plugin=precision_plugin("32-true", "cpu"), validate=True)
    assert module.val_micro_batch_size == 4 and module.micro_batch_size == 8 and module.oom_retries == 1
    assert calls["validation"] == 1 + 4 and "val/acc" in trainer.callback_metrics


@pytest.mark.slow  # starts two processes
def test_the_exchange_gives_the_gradients_ddp_s_own_sync_gives(tmp_path):
    """Two gloo ranks, each with its own data: all micro-batches unsynchronised plus one exchange
    equal DDP syncing in the last backward; a rank that ran out of memory is seen by both."""
    rank0, rank1 = run_on_ranks(gradients_by_ddp_and_by_exchange, tmp_path)
    for rank in (rank0, rank1):
        assert rank["ranks_out"] == 0 and rank["ranks_out_when_rank_1_ran_out"] == 1
        for by_ddp, by_exchange in zip(rank["by_ddp"], rank["by_exchange"]):
            torch.testing.assert_close(by_exchange, by_ddp, rtol=1e-5, atol=1e-7)
        # an exchange that a rank ran out in changes nobody's gradients: they are dropped anyway
        for kept, after in zip(rank["by_exchange"], rank["gradients_after_a_rank_ran_out"]):
            assert torch.equal(kept, after)
    for before0, before1, after0, after1 in zip(
        rank0["buffers_before"], rank1["buffers_before"], rank0["buffers_after"], rank1["buffers_after"]
    ):
        torch.testing.assert_close(after0, (before0 + before1) / 2)
        assert torch.equal(after0, after1)
    assert any(not torch.equal(a, b) for a, b in zip(rank0["buffers_before"], rank1["buffers_before"]))


def train_on_two_ranks(project, uri: str, out, *assignments: str, **faults: str) -> list[dict]:
    """tests/helpers/ddp_training.py on 2 gloo ranks in `project`; each rank's outcome, by rank."""
    out.mkdir()
    done = subprocess.run(
        ddp_training_command(out, [*assignments, "strategy=ddp", "devices=2", "accelerator=cpu"]),
        cwd=project,
        env=environment(uri, **faults),
        capture_output=True,
        text=True,
        timeout=600,  # ranks that disagree wait for each other forever
    )
    deadline = time.monotonic() + 120  # rank 1 may still be writing when rank 0 has exited
    while len(list(out.glob("rank*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(out.glob("rank*.json"))) == 2, done.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_ddp_ranks_agree_to_rerun_a_step_that_one_rank_ran_out_of_memory_in(prepared, tmp_path):
    """Rank 1 alone runs out of memory, after the backward of the last micro-batch of step 2:
    the one DDP used to synchronise in, which left the other rank waiting mid-reduction."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = [*QUICK, "max_epochs=2", "micro_batch_size=10", f"tracking.checkpoint_dir={tmp_path / 'ckpt'}"]
    ranks = train_on_two_ranks(prepared.parent.parent, uri, tmp_path / "out", *settings, **{OOM_AT: "1|6"})
    for result in ranks:
        assert result["status"] == "FINISHED" and result["oom_retries"] == 1
        assert result["micro_batch_size"] == 5 and result["accumulate_grad_batches"] == 6  # 30 a rank, halved
        assert result["effective_batch_size"] == 60 and result["steps"] == 8  # 2 epochs of 250 // 60: none lost
    states = [torch.load(tmp_path / "out" / f"rank{rank}.pt") for rank in (0, 1)]
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


@pytest.mark.slow
def test_out_of_memory_at_micro_batch_one_on_one_rank_stops_every_rank_with_the_same_error(prepared, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = [*QUICK, "micro_batch_size=1", f"tracking.checkpoint_dir={tmp_path / 'ckpt'}"]
    rank0, rank1 = train_on_two_ranks(prepared.parent.parent, uri, tmp_path / "out", *settings, **{OOM_AT: "1|1"})
    assert rank0 == rank1
    assert rank0["error"].startswith("out of memory at micro_batch_size=1 on 1 of 2 rank(s);")


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


def test_the_cpu_demo_grid_accumulates_its_batch_of_256_as_two_micro_batches_of_128():
    """cpu-demo.yaml's promise: batch 256 does not fit in memory_limit_mb 400, so it runs as
    accumulated micro-batches of 128 (one probe per batch size: the optimizers share it)."""
    grid = load_grid(ROOT / "slurm/grids/cpu-demo.yaml", ROOT / "params.yaml", {})
    trains = {point.config.train.batch_size: point.config.train for point in grid.points}
    chosen = {
        size: probe_micro_batch(fresh(train.model), torch.device("cpu"), size, "32-true", train.memory_limit_mb, 0.1)
        for size, train in trains.items()
    }
    assert sorted(chosen) == [256]
    assert chosen[256].micro_batch_size == 128

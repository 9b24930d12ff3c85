"""What only a CUDA GPU can show: real out-of-memory errors, mixed precision, NCCL, GPU metrics.

The CPU suite covers the same code with counted memory, injected faults and gloo. Here nothing
is injected: memory is capped with `torch.cuda.set_per_process_memory_fraction`, so the probe's
and the training step's `torch.OutOfMemoryError` are the allocator's own; fp16 and bf16 run on
tensor cores with Lightning's loss scaling; DDP talks NCCL; the run's peak memory comes from
torch.cuda and its system metrics from NVML. Every test skips without a CUDA device and carries
the `gpu` marker, which CI deselects; `benchmarks/gpu.sh` runs them on a lent GPU machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch

from helpers.ddp_training import OOM_AT, ddp_training_command
from helpers.runs import environment, history, overrides, runs_of
from helpers.synthetic import VAL_SIZE, write_archive
from hpcsweep.config import load_config
from hpcsweep.data.loader import PAD, DeviceLoader
from hpcsweep.hardware.precision import auto_precision
from hpcsweep.models import build_model
from hpcsweep.training import train as train_module
from hpcsweep.training.probe import probe_micro_batch
from hpcsweep.training.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda", 0)
ON_GPU = ["warmup_epochs=0", "batch_size=60", "base_batch_size=60", "accelerator=gpu"]
MIB = 2**20


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the module's runs: its schema is created once, not per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracked(tracking_uri, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return tracking_uri


@pytest.fixture
def memory_cap():
    """`cap(mb_above_now)`: the process may hold only what it holds now plus that much; lifted after."""

    def cap(headroom_mb: float) -> float:
        torch.cuda.empty_cache()  # what the allocator caches but does not use would count as held
        limit = torch.cuda.memory_reserved(CUDA) + headroom_mb * MIB
        torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(CUDA).total_memory, CUDA)
        return limit / MIB

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
    torch.cuda.empty_cache()


def gpu_config(project: Path, *assignments: str):
    return load_config(
        project / "params.yaml", [*ON_GPU, f"tracking.checkpoint_dir={project / 'checkpoints'}", *assignments]
    )


def fresh(model_name: str):
    def build():
        model = build_model(model_name).to(CUDA, memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    return build


def gpu_precision() -> str:
    return auto_precision("cuda", torch.cuda.get_device_capability(CUDA))


# --- the micro-batch probe and out-of-memory recovery ---------------------------------------


def test_the_probe_steps_down_past_real_out_of_memory_errors(memory_cap):
    per_rank = 2048  # resnet18 needs about 5 GB for it in bf16, 10 in fp32
    limit_mb = memory_cap(1024)
    probe = probe_micro_batch(fresh("resnet18"), CUDA, per_rank, gpu_precision(), None, 0.1)
    assert probe.micro_batch_size < per_rank and per_rank % probe.micro_batch_size == 0
    # no memory_limit_mb: the budget is the whole device, so only the allocator's errors made it step down
    assert probe.budget_mb > 4 * 1024 and probe.step_memory_mb < limit_mb


def test_the_probe_keeps_the_measured_peak_of_a_step_within_memory_limit_mb():
    probe = probe_micro_batch(fresh("resnet18"), CUDA, 2048, gpu_precision(), 1000, 0.1)
    assert probe.budget_mb == pytest.approx(900)
    assert probe.micro_batch_size < 2048 and 0 < probe.step_memory_mb <= 900


@pytest.fixture
def prepared_1200(project) -> Path:
    """1200 training images (1150 after the validation split): two steps of 512 per epoch."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    import_archive(write_archive(project / "archive1200.tar.gz", per_batch=240), project / "data/raw")
    prepare(project / "data/raw", project / "data/prepared", VAL_SIZE)
    return project


class CapMemoryAtSecondEpoch(L.Callback):
    """From the second epoch on, the process may hold only `headroom_mb` more than it holds then."""

    def __init__(self, cap, headroom_mb: float) -> None:
        self.cap, self.headroom_mb = cap, headroom_mb

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            self.cap(self.headroom_mb)


def test_a_real_out_of_memory_mid_run_halves_the_micro_batch_and_keeps_the_effective_batch(
    prepared_1200, tracked, memory_cap, monkeypatch
):
    # train() builds its own callbacks; the test adds the one that caps memory (the OOM itself is real)
    build_trainer = train_module.build_trainer
    monkeypatch.setattr(
        train_module,
        "build_trainer",
        lambda config, folder, callbacks: build_trainer(
            config, folder, [*callbacks, CapMemoryAtSecondEpoch(memory_cap, 256)]
        ),
    )
    # micro-batch 512 of resnet18 needs over 1 GB of activations: more than the 256 MB left
    config = gpu_config(
        prepared_1200, "model=resnet18", "batch_size=512", "base_batch_size=512", "micro_batch_size=512", "max_epochs=2"
    )
    result = train(config)
    assert result.status == "FINISHED" and result.oom_retries >= 1
    assert result.micro_batch_size < 512 and result.micro_batch_size * result.accumulate_grad_batches == 512
    assert result.effective_batch_size == 512 and result.steps == 4  # 2 epochs of 1150 // 512: no step lost
    run = mlflow.MlflowClient(tracked).get_run(result.run_id)
    assert run.data.metrics["effective_batch_size"] == 512
    assert [size for _, size in history(tracked, result.run_id, "micro_batch_size")] == [
        512.0,
        float(result.micro_batch_size),
    ]


# --- mixed precision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "optimizer", "lr"),
    [
        ("bf16-mixed", "sgd", 0.1),
        ("16-mixed", "sgd", 0.1),
        ("16-mixed", "lars", 2.0),
        ("16-mixed", "lamb", 0.02),
    ],
)
def test_mixed_precision_steps_in_micro_batches_lower_the_loss(prepared, tracked, precision, optimizer, lr):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(CUDA)} has no bf16")
    project = prepared.parent.parent
    config = gpu_config(
        project, f"precision={precision}", f"optimizer={optimizer}", f"lr={lr}", "micro_batch_size=20", "max_epochs=10"
    )
    result = train(config)
    assert result.status == "FINISHED" and result.accumulate_grad_batches == 3
    losses = [loss for _, loss in history(tracked, result.run_id, "train/loss")]
    # in fp32 on the CPU these settings end at 0.3-0.4 of the first epoch's loss
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert mlflow.MlflowClient(tracked).get_run(result.run_id).data.params["precision_used"] == precision


# --- NCCL -----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ddp_over_two_gpus_talks_nccl_and_trains_disjoint_shards(prepared, tracking_uri):
    project = prepared.parent.parent
    experiment = "gpu-ddp"
    args = [
        sys.executable,
        "-m",
        "hpcsweep",
        "train",
        *overrides(*ON_GPU, "max_epochs=2", "strategy=ddp", "devices=2", f"tracking.experiment={experiment}"),
    ]
    done = subprocess.run(args, cwd=project, env=environment(tracking_uri), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "distributed_backend=nccl" in done.stderr
    [run] = runs_of(tracking_uri, experiment)
    assert run.info.status == "FINISHED" and run.data.metrics["micro_batch_size"] == 30  # 60 over 2 ranks
    assert history(tracking_uri, run.info.run_id, "train/unique_samples") == [(0, 240.0), (1, 240.0)]
    assert history(tracking_uri, run.info.run_id, "train/repeated_samples") == [(0, 0.0), (1, 0.0)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_ranks_agree_to_rerun_a_step_that_one_rank_ran_out_of_memory_in(prepared, tmp_path):
    """The agreement's collective over NCCL. The fault is injected on rank 1 by the helper: a
    memory cap cannot be set on one rank of the ranks Lightning starts."""
    out = tmp_path / "out"
    out.mkdir()
    settings = [*ON_GPU, "max_epochs=2", "micro_batch_size=10", f"tracking.checkpoint_dir={tmp_path / 'ckpt'}"]
    done = subprocess.run(
        ddp_training_command(out, [*settings, "strategy=ddp", "devices=2"]),
        cwd=prepared.parent.parent,
        env=environment(f"sqlite:///{tmp_path / 'mlflow.db'}", **{OOM_AT: "1|6"}),
        capture_output=True,
        text=True,
        timeout=300,  # ranks that disagree wait for each other forever
    )
    assert done.returncode == 0 and "distributed_backend=nccl" in done.stderr, done.stderr[-4000:]
    deadline = time.monotonic() + 120  # rank 1 may still be writing when rank 0 has exited
    while len(list(out.glob("rank*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    for rank in (0, 1):
        result = json.loads((out / f"rank{rank}.json").read_text())
        assert result["status"] == "FINISHED" and result["oom_retries"] == 1 and result["steps"] == 8
        assert result["micro_batch_size"] == 5 and result["effective_batch_size"] == 60
    states = [torch.load(out / f"rank{rank}.pt", map_location="cpu") for rank in (0, 1)]
    assert all(torch.equal(value, states[1][name]) for name, value in states[0].items())


# --- what the run records -------------------------------------------------------------------


def test_the_run_records_cuda_peak_memory_nvml_metrics_and_the_precision_auto_chose(prepared, tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    project = prepared.parent.parent
    # 25 steps of 10 images an epoch, 6 epochs: seconds of training, so NVML is sampled several times
    config = gpu_config(
        project, "model=resnet18", "batch_size=10", "base_batch_size=10", "max_epochs=6", "tracking.system_metrics=true"
    )
    result = train(config)
    assert result.status == "FINISHED"
    run = mlflow.MlflowClient(tracked).get_run(result.run_id)
    weights_and_state_mb = 3 * sum(p.numel() * 4 for p in build_model("resnet18").parameters()) / MIB
    peak = run.data.metrics["peak_memory_mb"]
    # torch.cuda's figure: at least the weights, gradients and momentum, at most what CUDA saw allocated
    assert weights_and_state_mb < peak <= torch.cuda.max_memory_allocated(CUDA) / MIB + 1
    assert run.data.metrics["system/gpu_0_memory_usage_megabytes"] > 0
    assert run.data.params["precision_used"] == gpu_precision()


# --- the device loader ----------------------------------------------------------------------

COUNT, BATCH = 103, 16
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def cuda_loader(images: torch.Tensor, **options) -> DeviceLoader:
    labels = torch.arange(len(images), device=CUDA)  # a served label names its source image
    return DeviceLoader(images, labels, MEAN, STD, **{"batch_size": BATCH, "train": True, "seed": 0, **options})


def pixels_of(normalised: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=normalised.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=normalised.device).view(1, 3, 1, 1)
    return ((normalised * std + mean) * 255).round().to(torch.int16)


def is_window_of_padded(pixels: torch.Tensor, original: torch.Tensor) -> bool:
    """Whether `pixels` is a 32x32 window, flipped or not, of `original` padded by PAD zeros."""
    padded = torch.nn.functional.pad(original.to(torch.int16), (PAD, PAD, PAD, PAD))
    windows = padded.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)  # 9 x 9 x 3 x 32 x 32
    return any(bool((windows == candidate).flatten(2).all(-1).any()) for candidate in (pixels, pixels.flip(-1)))


@pytest.fixture
def cuda_images() -> torch.Tensor:
    return torch.randint(0, 256, (COUNT, 3, 32, 32), dtype=torch.uint8, device=CUDA)


def test_the_device_loader_serves_cuda_batches_of_cropped_and_flipped_originals(cuda_images):
    batches = list(cuda_loader(cuda_images))
    assert len(batches) == COUNT // BATCH
    for images, labels in batches:
        assert images.device == labels.device == CUDA
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
        pixels = pixels_of(images)
        assert all(is_window_of_padded(pixels[i], cuda_images[label]) for i, label in enumerate(labels.tolist()))
    eval_images = torch.cat([images for images, _ in cuda_loader(cuda_images, train=False)])
    torch.testing.assert_close(pixels_of(eval_images), cuda_images.to(torch.int16), rtol=0, atol=0)


def test_a_resumed_cuda_loader_serves_the_same_remaining_batches(cuda_images):
    loader = cuda_loader(cuda_images)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    resumed = cuda_loader(cuda_images)
    resumed.load_state_dict(loader.state_dict())
    remaining, served_after_resume = list(batches), list(resumed)
    assert len(remaining) == len(served_after_resume) == COUNT // BATCH - 3
    for (images_a, labels_a), (images_b, labels_b) in zip(remaining, served_after_resume):
        assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)

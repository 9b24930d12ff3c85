"""The figures a training-efficiency study compares: time, throughput, MFU, memory, time to target.

Accuracy alone cannot say which set-up trains best per GPU-hour; these can. A Lightning callback
measures them on every rank and logs them from rank 0 through `self.log`, so they reach MLflow
the same way as `val/acc`. Model FLOPs utilisation (`train/mfu`, hardware/flops.py) is logged only
where the device's peak is known: on the CPU or an unlisted GPU it is left out, not guessed. The
callback's state (time already spent, when the target was reached) is saved in checkpoints, so a
resumed run keeps counting from where it stopped instead of from zero.
"""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch

from hpcsweep.hardware.flops import forward_flops, model_flops_utilisation, peak_flops_per_s
from hpcsweep.models import build_model


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory on CUDA; on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def model_forward_flops(model_name: str) -> int:
    """Forward FLOPs of the named model for one CIFAR image, counted on a copy built on the meta device."""
    with torch.device("meta"):
        model = build_model(model_name)
    return forward_flops(model)


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of `device` in `precision`; None on the CPU or a GPU the peak table lacks."""
    if device.type != "cuda":
        return None
    return peak_flops_per_s(torch.cuda.get_device_name(device), precision, torch.backends.cudnn.allow_tf32)


class EfficiencyMetrics(L.Callback):
    """Logs epoch_time_s, train/images_per_s, model_gflops_per_image (counted once), train/mfu,
    peak_memory_mb and time_to_target_s per epoch."""

    def __init__(self, target_accuracy: float, model_name: str) -> None:
        self.target_accuracy = target_accuracy
        self.forward_flops = model_forward_flops(model_name)
        self.peak_flops: float | None = None  # all devices together
        self.elapsed_before = 0.0  # training seconds spent in earlier, interrupted sessions
        self.time_to_target_s: float | None = None
        self.total_time_s = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_started = time.perf_counter()
        # the ranks' GPUs are taken to be alike: rank 0's peak stands for each of them
        device_peak = device_peak_flops(trainer.strategy.root_device, trainer.precision)
        self.peak_flops = device_peak * trainer.world_size if device_peak else None

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed mid-epoch (SLURM requeue) continues its epoch without on_train_epoch_start
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self.images = 0
        self.epoch_started = time.perf_counter()
        self.training_seconds = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        self.images += len(batch[1])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.training_seconds = time.perf_counter() - self.epoch_started

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        training_seconds = self.training_seconds or now - self.epoch_started
        images_per_s = self.images * trainer.world_size / training_seconds
        figures = {
            "epoch_time_s": now - self.epoch_started,
            "train/images_per_s": images_per_s,
            "model_gflops_per_image": self.forward_flops / 1e9,  # counted once, in __init__
            "peak_memory_mb": peak_memory_mb(trainer.strategy.root_device),
        }
        if self.peak_flops:
            figures["train/mfu"] = model_flops_utilisation(self.forward_flops, images_per_s, self.peak_flops)
        accuracy = trainer.callback_metrics.get("val/acc")
        if self.time_to_target_s is None and accuracy is not None and accuracy >= self.target_accuracy:
            self.time_to_target_s = self.elapsed(now)
            figures["time_to_target_s"] = self.time_to_target_s
        for name, value in figures.items():
            pl_module.log(name, float(value), rank_zero_only=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self.total_time_s = self.elapsed(time.perf_counter())

    def elapsed(self, now: float) -> float:
        return self.elapsed_before + now - self.fit_started

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed(time.perf_counter()), "time_to_target_s": self.time_to_target_s}

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = state["elapsed"]
        self.time_to_target_s = state["time_to_target_s"]

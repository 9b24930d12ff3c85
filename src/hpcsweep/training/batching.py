"""The batch-size arithmetic: effective batch = micro-batch x accumulation x ranks.

`batch_size` in every config is the effective, global batch: what the optimizer step averages
over, what the LR scaling rule sees and what a study compares. How it is reached on a given
machine (how many ranks, how large a micro-batch fits, how many micro-batches are accumulated)
is an implementation detail that must never change the result, so it is planned here, checked
before training starts, and logged.

`micro_batch_size: auto` probes the real training step (forward, backward, optimizer step, at
the configured precision, channels_last) on the real device, largest candidate first, and keeps
the largest that fits the budget. On CUDA a candidate that does not fit raises
OutOfMemoryError, which is caught; on the CPU nothing raises before the kernel kills the process,
so the step's footprint is counted instead (parameters, gradients, optimizer state, and the
tensors autograd saves for backward), which lets the same logic be tested on any machine.
Unlike Lightning's batch-size finder, which changes the batch size itself and runs on one
process, this keeps the effective batch and is agreed by all DDP ranks (see module.py).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hpcsweep.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int  # effective, global
    world_size: int
    micro_batch_size: int  # per rank, per forward/backward
    accumulate_grad_batches: int

    @property
    def per_rank_batch_size(self) -> int:
        return self.batch_size // self.world_size


def divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def nearby(values: list[int], target: int, count: int = 4) -> str:
    return ", ".join(str(v) for v in sorted(sorted(values, key=lambda v: abs(v - target))[:count]))


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The samples each rank contributes to one optimizer step; errors name valid batch sizes."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        options = [v for v in (lower, lower + world_size) if v > 0]
        raise UserError(
            f"batch_size={batch_size} cannot be split over {world_size} ranks (devices x num_nodes); "
            f"valid nearby: {', '.join(map(str, options))}"
        )
    return batch_size // world_size


def plan_batches(batch_size: int, world_size: int, micro_batch_size: int) -> BatchPlan:
    """Accumulation for a given micro-batch; errors name the micro-batch sizes that would work."""
    per_rank = per_rank_batch_size(batch_size, world_size)
    if micro_batch_size > per_rank or per_rank % micro_batch_size:
        raise UserError(
            f"micro_batch_size={micro_batch_size} must divide the per-rank batch {per_rank} "
            f"(batch_size {batch_size} / {world_size} ranks); "
            f"valid nearby: {nearby(divisors(per_rank), micro_batch_size)}"
        )
    return BatchPlan(batch_size, world_size, micro_batch_size, per_rank // micro_batch_size)


@dataclass(frozen=True)
class Probe:
    micro_batch_size: int
    step_memory_mb: float  # what one training step of that micro-batch needed
    budget_mb: float | None  # what it had to fit in (None: no limit on the CPU)
    probe_time_s: float


def candidates(per_rank: int) -> list[int]:
    """Micro-batch sizes to try, largest first: the divisors of the per-rank batch."""
    return sorted(divisors(per_rank), reverse=True)


def memory_budget_mb(device: torch.device, memory_limit_mb: int | None, margin: float) -> float | None:
    """What a step may use: the device's memory, capped by memory_limit_mb, less the margin."""
    limit = memory_limit_mb
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        limit = min(total, memory_limit_mb) if memory_limit_mb else total
    return None if limit is None else limit * (1 - margin)


def autocast_for(device: torch.device, precision: str):
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


class SavedTensorMeter:
    """Bytes of the tensors autograd keeps for backward: the activation memory of a step."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total_bytes(self) -> int:
        return sum(self.storages.values())


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def cpu_step_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, precision: str
) -> int:
    """The real footprint of one training step on the CPU, counted rather than sampled."""
    meter = SavedTensorMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda tensor: tensor):
        with autocast_for(images.device, precision):
            loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    parameters = list(model.parameters())
    state = [value for per_parameter in optimizer.state.values() for value in per_parameter.values()]
    return (
        tensor_bytes(parameters)
        + tensor_bytes(p.grad for p in parameters)
        + tensor_bytes(state)
        + meter.total_bytes
        + tensor_bytes([images])
    )


def cuda_step_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, precision: str
) -> int:
    """The peak allocation of one real training step on CUDA (raises OutOfMemoryError if it does not fit)."""
    torch.cuda.synchronize(images.device)
    torch.cuda.reset_peak_memory_stats(images.device)
    with autocast_for(images.device, precision):
        loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize(images.device)
    return torch.cuda.max_memory_allocated(images.device)


def probe_micro_batch(
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer]],
    device: torch.device,
    per_rank: int,
    precision: str,
    memory_limit_mb: int | None,
    margin: float,
) -> Probe:
    """The largest micro-batch whose real training step fits the budget, trying the largest first.

    `build` makes a fresh model and optimizer each time, so the probe never touches the weights
    that will be trained and every candidate starts from the same empty state.
    """
    started = time.perf_counter()
    budget = memory_budget_mb(device, memory_limit_mb, margin)
    measure = cuda_step_bytes if device.type == "cuda" else cpu_step_bytes
    smallest_need = None
    for size in candidates(per_rank):
        model, optimizer = build()
        images = torch.randn(size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (size,), device=device)
        try:
            need = measure(model, optimizer, images, labels, precision) / 2**20
        except torch.OutOfMemoryError:
            need = math.inf
        finally:
            del model, optimizer, images, labels
            release_cached_memory(device)
        smallest_need = need
        if budget is None or need <= budget:
            return Probe(size, round(need, 1), budget, time.perf_counter() - started)
    raise UserError(
        f"train.memory_limit_mb={memory_limit_mb}: even micro_batch_size=1 needs {smallest_need:.0f} MB, more than "
        f"the {budget:.0f} MB budget (limit less memory_margin={margin}); raise memory_limit_mb or use a smaller model"
    )


def release_cached_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""The micro-batch probe: the largest micro-batch whose real training step fits the device.

`micro_batch_size: auto` probes the real training step (forward, backward, optimizer step, at
the configured precision, channels_last) on the real device, largest candidate first, and keeps
the largest that fits the budget. On CUDA a candidate that does not fit raises
OutOfMemoryError, which is caught; on the CPU nothing raises before the kernel kills the process,
so the step's footprint is counted instead (parameters, gradients, optimizer state, and the
tensors autograd saves for backward), which lets the same logic be tested on any machine.
Unlike Lightning's batch-size finder, which changes the batch size itself and runs on one
process, this keeps the effective batch and is agreed by all DDP ranks (see module.py); the
arithmetic it relies on lives in batch_plan.py.
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
from hpcsweep.training.batch_plan import divisors


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
    """The largest micro-batch whose real training step fits the budget, trying the largest first,
    once the smallest was found to fit: where even it does not, no larger one is tried.

    `build` makes a fresh model and optimizer each time, so the probe never touches the weights
    that will be trained and every candidate starts from the same empty state.
    """
    started = time.perf_counter()
    budget = memory_budget_mb(device, memory_limit_mb, margin)
    measure = cuda_step_bytes if device.type == "cuda" else cpu_step_bytes
    sizes = candidates(per_rank)
    if budget is None:  # the CPU without a limit: the largest, measured for the record
        need = step_need_mb(build, measure, device, sizes[0], precision)
        return Probe(sizes[0], round(need, 1), None, elapsed(started))
    smallest_need = step_need_mb(build, measure, device, sizes[-1], precision)
    if smallest_need > budget:
        raise UserError(
            f"train.memory_limit_mb={memory_limit_mb}: even micro_batch_size=1 needs {smallest_need:.0f} MB, "
            f"more than the {budget:.0f} MB budget (limit less memory_margin={margin}); raise memory_limit_mb "
            "or use a smaller model"
        )
    for size in sizes[:-1]:
        need = step_need_mb(build, measure, device, size, precision)
        if need <= budget:
            return Probe(size, round(need, 1), budget, elapsed(started))
    return Probe(sizes[-1], round(smallest_need, 1), budget, elapsed(started))


def elapsed(started: float) -> float:
    return time.perf_counter() - started


def step_need_mb(build: Callable, measure: Callable, device: torch.device, size: int, precision: str) -> float:
    """What one training step of a `size` micro-batch needs, on a fresh model; inf where it ran out."""
    model, optimizer = build()
    images = torch.randn(size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (size,), device=device)
    try:
        return measure(model, optimizer, images, labels, precision) / 2**20
    except torch.OutOfMemoryError:
        return math.inf
    finally:
        del model, optimizer, images, labels
        release_cached_memory(device)


def release_cached_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""The batch-size arithmetic: effective batch = micro-batch x accumulation x ranks.

`batch_size` in every config is the effective, global batch: what the optimizer step averages
over, what the LR scaling rule sees and what a study compares. How it is reached on a given
machine (how many ranks, how large a micro-batch fits, how many micro-batches are accumulated)
is an implementation detail that must never change the result, so it is planned here, checked
before training starts, and logged.

Pure arithmetic with no torch import, so config.py can check a batch plan while validating a
config and a mistyped batch size is refused before torch is loaded. Its errors are `UserError`s
because that is how a user sees them: through config validation, naming the sizes that would work.
"""

from __future__ import annotations

from dataclasses import dataclass

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

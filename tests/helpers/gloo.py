"""Functions run on two gloo ranks of one machine, and what each rank returned.

For checks of the collective the training's DDP step relies on (training/module.py's
RankExchange) against DDP's own gradient sync, without a Trainer: `torch.multiprocessing`
starts the ranks, each writes its result to a file the test reads back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hpcsweep.models import build_model
from hpcsweep.training.module import RankExchange, share_of_batch_loss


def run_on_ranks(function: Callable[[int, int], dict], folder: Path, world_size: int = 2) -> list[dict]:
    """`function(rank, world_size)` on each rank of a gloo group; the dicts it returned, by rank."""
    torch.multiprocessing.spawn(_rank_main, (function, folder, world_size), nprocs=world_size)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(world_size)]


def _rank_main(rank: int, function: Callable[[int, int], dict], folder: Path, world_size: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world_size)
    try:
        torch.save(function(rank, world_size), folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def accumulate(ddp: DistributedDataParallel, images, labels, micro: int, sync_last: bool) -> None:
    """Every micro-batch's backward, DDP's sync blocked except on the last one if `sync_last`."""
    ddp.module.zero_grad(set_to_none=True)
    for start in range(0, len(labels), micro):
        last = start + micro >= len(labels)
        micro_images, micro_labels = images[start : start + micro], labels[start : start + micro]
        with contextlib.nullcontext() if sync_last and last else ddp.no_sync():
            share_of_batch_loss(ddp, micro_images, micro_labels, len(labels)).backward()


def gradients_by_ddp_and_by_exchange(rank: int, world_size: int) -> dict:
    """One step's gradients as DDP's own sync gives them and as RankExchange does, from the same
    weights and this rank's own data; then what an exchange does when rank 1 ran out of memory."""
    torch.manual_seed(0)  # the same weights on every rank, as DDP requires
    model = build_model("resnet20").to(memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(rank)  # each rank its own data
    images = torch.randn(12, 3, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (12,), generator=generator)
    accumulate(ddp, images, labels, micro=4, sync_last=True)
    by_ddp = [p.grad.clone() for p in model.parameters()]
    accumulate(ddp, images, labels, micro=4, sync_last=False)
    exchange = RankExchange(model, world_size)
    buffers_before = [b.clone() for b in exchange.buffers]
    ranks_out = exchange.ranks_out_of_memory(ran_out=False)
    by_exchange = [p.grad.clone() for p in model.parameters()]
    ranks_out_when_rank_1_ran_out = exchange.ranks_out_of_memory(ran_out=rank == 1)
    return {
        "by_ddp": by_ddp,
        "by_exchange": by_exchange,
        "ranks_out": ranks_out,
        "buffers_before": buffers_before,
        "buffers_after": [b.clone() for b in exchange.buffers],
        "ranks_out_when_rank_1_ran_out": ranks_out_when_rank_1_ran_out,
        "gradients_after_a_rank_ran_out": [p.grad.clone() for p in model.parameters()],
    }

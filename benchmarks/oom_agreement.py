"""What the DDP out-of-memory agreement costs per step, against DDP's own gradient sync.

Under DDP the training step (training/module.py) runs every micro-batch with DDP's sync blocked
and ends with one all_reduce of a flat tensor holding the gradients, the BatchNorm statistics
and an out-of-memory flag (`RankExchange`), so that all ranks agree whether to rerun the step.
DDP's own sync, which the module used before, all-reduces in buckets while the last
micro-batch's backward still runs. This script measures, on 2 gloo ranks of this machine's CPU,
resnet20, the same weights, data and optimizer:

  (a) a step with DDP's own sync: micro-batches under `no_sync` but the last, then the optimizer;
  (b) a step with the agreement: every micro-batch under `no_sync`, the exchange, the optimizer;
  (c) the exchange alone: a step like (b) in which the ranks meet at a barrier (not timed) before
      the exchange, so that its time is its own (copy in, all_reduce, read the flag, average, copy
      out) and not a wait for the slower rank's backward, which (a) and (b) both include;
  (d) a lone 1-element all_reduce: what a separate agreement collective would add to a step
      whose gradients DDP synchronises (the design the exchange folds the flag into).

Ranks start each step together (a barrier, not timed). (a) and (b) alternate in rounds so that a
change in the machine's load falls on both; every figure is rank 0's median over all timed steps.

    .venv/bin/python benchmarks/oom_agreement.py               # about a minute on 2 cores

Not a test: run it on an otherwise idle machine (it prints the load average) and copy the
figures into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hpcsweep.models import build_model
from hpcsweep.training.module import RankExchange, share_of_batch_loss

WORLD_SIZE = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch of a step (default 64)")
    parser.add_argument("--micro", type=int, default=32, help="micro-batch size (default 32: 2 per step)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating (a) and (b) (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first (default 3)")
    return parser.parse_args()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB; Python {platform.python_version()}, "
        f"torch {torch.__version__}; {WORLD_SIZE} gloo ranks, 1 thread each"
    )


class Ranks:
    """One rank's model, data and timers for both kinds of step."""

    def __init__(self, batch: int, micro: int) -> None:
        torch.manual_seed(0)  # the same weights on every rank
        self.model = build_model("resnet20").to(memory_format=torch.channels_last)
        self.ddp = DistributedDataParallel(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.exchange = RankExchange(self.model, WORLD_SIZE)
        generator = torch.Generator().manual_seed(dist.get_rank())
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        self.images = images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, 10, (batch,), generator=generator)
        self.micro = micro
        self.flag = torch.zeros(1)
        self.times: dict[str, list[float]] = {"ddp": [], "agreed": [], "exchange": [], "flag": []}

    def backward(self, sync_last: bool) -> None:
        for start in range(0, len(self.labels), self.micro):
            last = start + self.micro >= len(self.labels)
            images, labels = self.images[start : start + self.micro], self.labels[start : start + self.micro]
            with contextlib.nullcontext() if sync_last and last else self.ddp.no_sync():
                share_of_batch_loss(self.ddp, images, labels, len(self.labels)).backward()

    def step_with_ddp_sync(self) -> None:
        self.backward(sync_last=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step_with_agreement(self) -> None:
        self.backward(sync_last=False)
        self.agree()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step_with_a_timed_exchange(self) -> None:
        self.backward(sync_last=False)
        self.timed("exchange", self.agree)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def agree(self) -> None:
        if self.exchange.ranks_out_of_memory(ran_out=False):
            raise RuntimeError("no rank can run out of memory here")

    def lone_flag(self) -> None:
        dist.all_reduce(self.flag)
        self.flag.item()

    def timed(self, name: str, run) -> None:
        dist.barrier()
        started = time.perf_counter()
        run()
        self.times[name].append(time.perf_counter() - started)

    def round(self, steps: int, record: bool) -> None:
        for _ in range(steps):
            self.timed("ddp", self.step_with_ddp_sync)
            self.timed("agreed", self.step_with_agreement)
            self.step_with_a_timed_exchange()
            self.timed("flag", self.lone_flag)
        if not record:
            for figures in self.times.values():
                figures.clear()


def rank_main(rank: int, args: argparse.Namespace, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        ranks = Ranks(args.batch, args.micro)
        ranks.round(args.warmup, record=False)
        for _ in range(args.rounds):
            ranks.round(args.steps, record=True)
        if rank == 0:
            report(ranks.times, args)
    finally:
        dist.destroy_process_group()


def report(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    medians = {name: statistics.median(figures) * 1000 for name, figures in times.items()}
    steps = len(times["ddp"])
    accumulation = args.batch // args.micro
    print(f"resnet20, per-rank batch {args.batch} as {accumulation} micro-batches of {args.micro}, {steps} steps each")
    print(f"(a) step with DDP's own sync                   median {medians['ddp']:8.2f} ms")
    print(f"(b) step with the agreement (one exchange)      median {medians['agreed']:8.2f} ms")
    print(f"(c) the exchange alone, ranks met first         median {medians['exchange']:8.2f} ms")
    print(f"(d) a lone 1-element all_reduce (flag only)     median {medians['flag']:8.2f} ms")
    print(f"(b) / (a)                                       {medians['agreed'] / medians['ddp']:8.3f}")
    print(f"(b) - (a) per step                              {medians['agreed'] - medians['ddp']:8.2f} ms")
    print(f"(d) / (a)                                       {medians['flag'] / medians['ddp']:8.4f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    args = parse_args()
    if args.batch % args.micro:
        raise SystemExit(f"--micro {args.micro} must divide --batch {args.batch}")
    print(f"machine: {machine()}")
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(rank_main, (args, folder), nprocs=WORLD_SIZE)


if __name__ == "__main__":
    main()

"""A training on several gloo ranks in which one rank can be given its own fault or memory limit.

Run as a script from a project folder: `python tests/helpers/ddp_training.py OUT_DIR key=value ...`
(the assignments are `-s` overrides of its params.yaml). Lightning starts the other ranks by
running the same command again, so whatever this script changes, it changes on every rank, and
each rank acts on its own rank number. Each rank writes OUT_DIR/rank<N>.json (its TrainResult, or
the UserError it ended with) and OUT_DIR/rank<N>.pt (its module's state when training ended).

A CPU cannot run out of memory for real (the kernel kills the process first), and ranks on one
machine have the same memory, so both are injected, from the environment:
- OOM_AT="RANK|N": that rank raises torch.OutOfMemoryError right after its N-th training
  micro-batch's backward (its gradients accumulated, as when memory runs out late in a backward);
- MEMORY_LIMITS="MB0,MB1,...": each rank's micro-batch probe gets its own memory_limit_mb, as
  ranks on GPUs of different sizes would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.training import module
from hpcsweep.training.train import train

OOM_AT = "HPCSWEEP_TEST_OOM_AT"
MEMORY_LIMITS = "HPCSWEEP_TEST_MEMORY_LIMITS"


def ddp_training_command(out: Path, assignments: list[str]) -> list[str]:
    return [sys.executable, __file__, str(out), *assignments]


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def out_of_memory_at(faulty_rank: int, nth: int) -> None:
    real_backward = module.ResNetModule.backward_micro_batch
    calls = [0]

    def backward_then_run_out(self, images, labels):
        loss = real_backward(self, images, labels)
        if self.trainer.global_rank == faulty_rank:
            calls[0] += 1
            if calls[0] == nth:
                raise torch.OutOfMemoryError(f"injected by the test on rank {faulty_rank}")
        return loss

    module.ResNetModule.backward_micro_batch = backward_then_run_out


def memory_limit_per_rank(limits: list[int]) -> None:
    real_probe = module.probe_micro_batch

    def probe_with_this_ranks_limit(build, device, per_rank, precision, _limit, margin):
        return real_probe(build, device, per_rank, precision, limits[rank()], margin)

    module.probe_micro_batch = probe_with_this_ranks_limit


def save_state_when_training_ends(out: Path) -> None:
    def save(self) -> None:
        torch.save(self.state_dict(), out / f"rank{self.trainer.global_rank}.pt")

    module.ResNetModule.on_train_end = save


def main(out: Path, assignments: list[str]) -> None:
    if os.environ.get(OOM_AT):
        faulty_rank, nth = os.environ[OOM_AT].split("|")
        out_of_memory_at(int(faulty_rank), int(nth))
    if os.environ.get(MEMORY_LIMITS):
        memory_limit_per_rank([int(mb) for mb in os.environ[MEMORY_LIMITS].split(",")])
    save_state_when_training_ends(out)
    try:
        outcome = dataclasses.asdict(train(load_config(Path("params.yaml"), assignments)))
    except UserError as error:
        outcome = {"error": str(error)}
    # after training the process group is gone: the rank is the one Lightning's launcher gave
    (out / f"rank{os.environ.get('LOCAL_RANK', '0')}.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

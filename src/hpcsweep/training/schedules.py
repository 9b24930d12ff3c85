"""Learning-rate schedules by name: onecycle, and constant, cosine and step after a linear warm-up.

Sweeps vary the schedule by name, so this module turns a name and two step counts into a torch
scheduler that steps once per optimizer step (a resumed run restores it from its state_dict).
A user's scheduler and warm-up are validated in config.py; here an unknown name or impossible
step counts are programming errors and raise ValueError. `SCHEDULE_BUILDERS` is what config.py's
SCHEDULERS must match (a test checks).
"""

import math
from collections.abc import Callable
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from hpcsweep.training.optimizers import require_known

ONECYCLE_DEFAULT_PCT_START = 0.3
STEP_MILESTONE_FRACTIONS = (0.5, 0.75)
STEP_DECAY_FACTOR = 0.1

Shape = Callable[[int, int, int], float]


def warmup_factor(step: int, warmup_steps: int) -> float:
    # Reaches 1 on the last warm-up step, so the first step already moves (lr / warmup_steps).
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def constant_shape(step: int, total_steps: int, warmup_steps: int) -> float:
    return 1.0


def cosine_shape(step: int, total_steps: int, warmup_steps: int) -> float:
    # Anneals over the steps after warm-up; clamped so stepping past the end stays at 0.
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


def step_shape(step: int, total_steps: int, warmup_steps: int) -> float:
    milestones = [int(fraction * total_steps) for fraction in STEP_MILESTONE_FRACTIONS]
    milestones_passed = sum(step >= milestone for milestone in milestones)
    return STEP_DECAY_FACTOR**milestones_passed


def lr_multiplier(step: int, shape: Shape, total_steps: int, warmup_steps: int) -> float:
    return warmup_factor(step, warmup_steps) * shape(step, total_steps, warmup_steps)


def warmup_then(shape: Shape, optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """A linear warm-up from lr / warmup_steps to each group's lr, then `shape` times that lr."""
    multiplier = partial(lr_multiplier, shape=shape, total_steps=total_steps, warmup_steps=warmup_steps)
    return LambdaLR(optimizer, multiplier)


def one_cycle(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """torch's OneCycleLR peaking at each group's lr after warmup_steps (30% of total_steps when 0).

    It does not cycle momentum, so the configured momentum holds and optimizers without momentum
    (adagrad) work; it raises if stepped more than total_steps times.
    """
    pct_start = warmup_steps / total_steps if warmup_steps > 0 else ONECYCLE_DEFAULT_PCT_START
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        cycle_momentum=False,
    )


SCHEDULE_BUILDERS: dict[str, Callable[[Optimizer, int, int], LRScheduler]] = {
    "onecycle": one_cycle,
    "cosine": partial(warmup_then, cosine_shape),
    "step": partial(warmup_then, step_shape),
    "constant": partial(warmup_then, constant_shape),
}


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int) -> LRScheduler:
    """Schedule `name` for `optimizer`; call its `step()` once after every optimizer step.

    constant, cosine (to 0 at total_steps) and step (x0.1 at 50% and 75% of total_steps) start
    with a linear warm-up over warmup_steps steps; onecycle peaks after warmup_steps steps (see
    `one_cycle`). Needs 1 <= total_steps and 0 <= warmup_steps < total_steps.
    """
    require_known("scheduler", name, SCHEDULE_BUILDERS)
    if total_steps < 1:
        raise ValueError(f"total steps must be at least 1; got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warm-up steps must be in [0, total steps {total_steps}); got {warmup_steps}")
    return SCHEDULE_BUILDERS[name](optimizer, total_steps, warmup_steps)

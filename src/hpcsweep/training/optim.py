"""Optimizers, learning-rate schedules and the batch-size learning-rate scaling rule.

Sweeps vary the optimizer, the schedule and the batch size by name, so this module turns those
names and a few numbers into torch objects, and rejects bad names and values as `UserError`
before torch sees them. Everything takes primitive arguments, never a config object, so it can
be used and tested without the rest of the project.

torch ships neither LARS nor LAMB, the two large-batch optimizers such studies need, so small
implementations of both live here.
"""

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from hpcsweep.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lars", "lamb")
SCHEDULERS = ("onecycle", "cosine", "step", "constant")
LR_SCALINGS = ("linear", "sqrt", "none")

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
ONECYCLE_DEFAULT_PCT_START = 0.3
STEP_MILESTONE_FRACTIONS = (0.5, 0.75)
STEP_DECAY_FACTOR = 0.1

ParamGroups = list[dict[str, Any]]
Closure = Callable[[], float] | None


def require_known(kind: str, name: str, valid: tuple[str, ...]) -> None:
    if name not in valid:
        raise UserError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}")


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """The learning rate for `batch_size`, given `lr` was tuned for `base_batch_size`.

    `batch_size` must be the effective (global) batch size: per-device batch x devices x
    gradient-accumulation steps, because that is how many samples each optimizer step averages.
    Rules: "linear" (Goyal et al. 2017) lr * bs / base, "sqrt" (Krizhevsky 2014; Hoffer et al.
    2017) lr * sqrt(bs / base), "none" lr unchanged.
    """
    require_known("lr scaling rule", rule, LR_SCALINGS)
    for label, size in (("batch size", batch_size), ("base batch size", base_batch_size)):
        if size < 1:
            raise UserError(f"{label} must be at least 1; got {size}")
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


def no_decay_parameter_ids(model: nn.Module) -> set[int]:
    """ids of normalization-layer parameters and of every bias in `model`."""
    ids: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name == "bias":
                ids.add(id(parameter))
    return ids


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> ParamGroups:
    """Optimizer parameter groups for `model`, each parameter in exactly one group.

    With `decay_norm_and_bias` False, normalization weights/biases and all other biases go into
    a group with weight_decay 0: decaying them only shrinks scales and shifts that BatchNorm
    re-learns, which costs accuracy (Goyal et al. 2017; Jia et al. 2018). Empty groups are left
    out. Parameters shared between modules are listed once.
    """
    if weight_decay < 0:
        raise UserError(f"weight decay must be >= 0; got {weight_decay}")
    parameters = list(model.parameters())
    if decay_norm_and_bias:
        return [{"params": parameters, "weight_decay": weight_decay}]
    exempt = no_decay_parameter_ids(model)
    decayed = [p for p in parameters if id(p) not in exempt]
    not_decayed = [p for p in parameters if id(p) in exempt]
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


class LayerwiseOptimizer(Optimizer):
    """Base for optimizers whose update is computed per parameter tensor (one "layer")."""

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = None
        if closure is not None:
            # torch.optim's contract: the closure recomputes the loss with gradients enabled.
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self.update_parameter(parameter, group)
        return loss

    def update_parameter(self, parameter: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError


def trust_ratio(weight_norm: torch.Tensor, other_norm: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """`ratio` where both norms are positive, else 1.

    A zero weight (fresh zero-init layer) or a zero update has no scale to compare against, so
    the update passes through unscaled. Stays a tensor to avoid a host-device sync per layer.
    """
    both_positive = (weight_norm > 0) & (other_norm > 0)
    return torch.where(both_positive, ratio, torch.ones_like(ratio))


class Lars(LayerwiseOptimizer):
    """LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017, arXiv:1708.03888).

    SGD with momentum in which each parameter tensor's step (gradient plus weight decay) is
    multiplied by the trust ratio eta * ||w|| / (||g|| + wd * ||w||). Parameters in a group
    with weight_decay 0 (normalization weights and biases from `parameter_groups`) skip the
    adaptation and get plain momentum SGD, as in common implementations (SimCLR, Barlow Twins),
    since their norms say nothing about a sensible step size.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    def update_parameter(self, parameter: torch.Tensor, group: dict[str, Any]) -> None:
        gradient = parameter.grad
        weight_decay = group["weight_decay"]
        if weight_decay != 0:
            weight_norm = torch.linalg.vector_norm(parameter)
            gradient_norm = torch.linalg.vector_norm(gradient)
            eta = group["trust_coefficient"]
            ratio = eta * weight_norm / (gradient_norm + weight_decay * weight_norm)
            gradient = gradient + weight_decay * parameter
            gradient = gradient * trust_ratio(weight_norm, gradient_norm, ratio)
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(parameter)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(gradient)
        parameter.add_(buffer, alpha=-group["lr"])


class Lamb(LayerwiseOptimizer):
    """LAMB: layer-wise adaptive moments (You et al. 2019, arXiv:1904.00962, algorithm 2).

    Adam moments with bias correction; each parameter tensor's update
    m_hat / (sqrt(v_hat) + eps) + wd * w is multiplied by the trust ratio ||w|| / ||update||
    (1 when either norm is 0). Unlike `Lars`, every parameter is adapted, as in the paper,
    including those in weight_decay-0 groups.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update_parameter(self, parameter: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[parameter]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(parameter.grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(parameter.grad, parameter.grad, value=1 - beta2)
        m_hat = exp_avg / (1 - beta1 ** state["step"])
        v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
        update = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * parameter
        weight_norm = torch.linalg.vector_norm(parameter)
        update_norm = torch.linalg.vector_norm(update)
        ratio = trust_ratio(weight_norm, update_norm, weight_norm / update_norm)
        parameter.sub_(update * ratio, alpha=group["lr"])


def validate_optimizer_settings(name: str, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
    require_known("optimizer", name, OPTIMIZERS)
    if lr <= 0:
        raise UserError(f"learning rate must be > 0; got {lr}")
    if not 0 <= momentum < 1:
        raise UserError(f"momentum must be in [0, 1); got {momentum}")
    if weight_decay < 0:
        raise UserError(f"weight decay must be >= 0; got {weight_decay}")
    if nesterov and name != "sgd":
        raise UserError(f"nesterov applies only to optimizer 'sgd'; got optimizer '{name}'")
    if nesterov and momentum == 0:
        raise UserError("nesterov needs momentum > 0; got momentum 0")


def build_optimizer(
    groups: ParamGroups, name: str, lr: float, momentum: float, nesterov: bool, weight_decay: float
) -> Optimizer:
    """Optimizer `name` over `groups` (e.g. from `parameter_groups`).

    `lr` and `weight_decay` are defaults for groups that do not set their own; groups from
    `parameter_groups` always set weight_decay. `momentum` is used by sgd, rmsprop and lars and
    ignored by the Adam family and adagrad (they keep torch's default betas); `nesterov` is
    only valid with sgd. adam's weight decay is L2 added to the gradient; adamw's is decoupled.
    """
    validate_optimizer_settings(name, lr, momentum, nesterov, weight_decay)
    builders: dict[str, Callable[[], Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
        "adam": lambda: torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay),
        "adamw": lambda: torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay),
        "rmsprop": lambda: torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=weight_decay),
        "adagrad": lambda: torch.optim.Adagrad(groups, lr=lr, weight_decay=weight_decay),
        "lars": lambda: Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay),
        "lamb": lambda: Lamb(groups, lr=lr, weight_decay=weight_decay),
    }
    return builders[name]()


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


SCHEDULE_SHAPES: dict[str, Callable[[int, int, int], float]] = {
    "constant": constant_shape,
    "cosine": cosine_shape,
    "step": step_shape,
}


def lr_multiplier(step: int, shape: Callable[[int, int, int], float], total_steps: int, warmup_steps: int) -> float:
    return warmup_factor(step, warmup_steps) * shape(step, total_steps, warmup_steps)


def validate_schedule_settings(name: str, total_steps: int, warmup_steps: int) -> None:
    require_known("scheduler", name, SCHEDULERS)
    if total_steps < 1:
        raise UserError(f"total steps must be at least 1; got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise UserError(f"warm-up steps must be in [0, total steps {total_steps}); got {warmup_steps}")


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int) -> LRScheduler:
    """Schedule `name` for `optimizer`; call its `step()` once after every optimizer step.

    constant, cosine (to 0 at total_steps) and step (x0.1 at 50% and 75% of total_steps) start
    with a linear warm-up from lr / warmup_steps to each group's lr over warmup_steps steps.
    onecycle is torch's OneCycleLR peaking at each group's lr after warmup_steps steps (30% of
    total_steps when warmup_steps is 0). It does not cycle momentum, so the configured momentum
    holds and optimizers without momentum (adagrad) work; it raises if stepped more than
    total_steps times. Needs 1 <= total_steps and 0 <= warmup_steps < total_steps.
    """
    validate_schedule_settings(name, total_steps, warmup_steps)
    if name == "onecycle":
        pct_start = warmup_steps / total_steps if warmup_steps > 0 else ONECYCLE_DEFAULT_PCT_START
        return OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            cycle_momentum=False,
        )
    multiplier = partial(
        lr_multiplier,
        shape=SCHEDULE_SHAPES[name],
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    return LambdaLR(optimizer, multiplier)

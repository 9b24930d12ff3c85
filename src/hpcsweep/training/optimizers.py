"""Optimizers by name, their parameter groups, and the batch-size learning-rate scaling rule.

Sweeps vary the optimizer and the batch size by name, so this module turns those names and a
few numbers into torch objects. Everything takes primitive arguments, never a config object, so
it can be used and tested without the rest of the project. A user's values are validated once,
in config.py; here an unknown name is a programming error and raises ValueError naming the
valid ones. The registries below are what config.py's choice names must match (a test checks).
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from hpcsweep.training.layerwise import Lamb, Lars

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

ParamGroups = list[dict[str, Any]]

# The learning-rate multiplier for a batch `ratio` times the base batch size.
LR_SCALING_RULES: dict[str, Callable[[float], float]] = {
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
    "none": lambda ratio: 1.0,
}

# Each optimizer's class and the settings it takes besides lr and weight_decay: the Adam family
# and adagrad keep torch's default betas and have no momentum to set.
OPTIMIZER_CLASSES: dict[str, tuple[type[Optimizer], tuple[str, ...]]] = {
    "sgd": (torch.optim.SGD, ("momentum", "nesterov")),
    "adam": (torch.optim.Adam, ()),
    "adamw": (torch.optim.AdamW, ()),
    "rmsprop": (torch.optim.RMSprop, ("momentum",)),
    "adagrad": (torch.optim.Adagrad, ()),
    "lars": (Lars, ("momentum",)),
    "lamb": (Lamb, ()),
}


def require_known(kind: str, name: str, registry: dict[str, Any]) -> None:
    """Raise ValueError naming the valid choices if `name` is not a key of `registry`."""
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}'; valid: {', '.join(registry)}")


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """The learning rate for `batch_size`, given `lr` was tuned for `base_batch_size`.

    `batch_size` must be the effective (global) batch size: per-device batch x devices x
    gradient-accumulation steps, because that is how many samples each optimizer step averages.
    Rules: "linear" (Goyal et al. 2017) lr * bs / base, "sqrt" (Krizhevsky 2014; Hoffer et al.
    2017) lr * sqrt(bs / base), "none" lr unchanged.
    """
    require_known("lr scaling rule", rule, LR_SCALING_RULES)
    return lr * LR_SCALING_RULES[rule](batch_size / base_batch_size)


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


def build_optimizer(
    groups: ParamGroups, name: str, lr: float, momentum: float, nesterov: bool, weight_decay: float
) -> Optimizer:
    """Optimizer `name` over `groups` (e.g. from `parameter_groups`).

    Every group carries each setting the config gives, a group's own `lr` or `weight_decay` winning
    (the lr scaled to the batch size; no decay on norms and biases), and `optimizer.defaults` keeps
    only torch's own settings (dampening, betas, eps, ...), so a group added later must name these
    itself. Why: MLflow's Lightning autologging logs the defaults as params, into a run that
    already holds the config's lr, momentum, nesterov and weight_decay (logged by hpcsweep, or by
    `mlflow run` as typed: `1e-3`, `false`); MLflow refuses a param logged again with another value
    or spelling, and autologging's whole batch (`epochs`, `optimizer_name`, ...) goes with it.

    `momentum` is used by sgd, rmsprop and lars and ignored by the Adam family and adagrad (they
    keep torch's default betas); `nesterov` is only meaningful with sgd (config.py refuses it
    elsewhere). adam's weight decay is L2 added to the gradient; adamw's is decoupled.
    """
    require_known("optimizer", name, OPTIMIZER_CLASSES)
    optimizer_class, extra_setting_names = OPTIMIZER_CLASSES[name]
    settings = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov}
    configured = {setting: settings[setting] for setting in ("lr", "weight_decay", *extra_setting_names)}
    optimizer = optimizer_class([{**configured, **group} for group in groups], **configured)
    for setting in configured:
        del optimizer.defaults[setting]
    return optimizer

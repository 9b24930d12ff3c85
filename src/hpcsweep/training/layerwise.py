"""LARS and LAMB: the large-batch optimizers torch does not ship.

Large-batch studies compare plain SGD and Adam against optimizers that scale each layer's step
by a trust ratio, its weight norm over its update norm, so that no layer's step outgrows its
weights when the learning rate is scaled up with the batch. Both are small `torch.optim`
optimizers sharing one per-parameter step loop; optimizers.py builds them by name.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

Closure = Callable[[], float] | None


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

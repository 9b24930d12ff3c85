"""Checks the optimizer, schedule and learning-rate scaling factory that every sweep goes through.

A sweep's conclusions about batch size and optimizers are only as good as these pieces: the lr
must scale by the stated rule, weight decay must skip norms and biases when asked, LARS/LAMB
must really apply their trust ratios, and each schedule must trace the curve its name promises.
"""

import io
import math

import pytest
import torch
from torch import nn

from helpers.project import ROOT
from hpcsweep.config import LR_SCALINGS, OPTIMIZERS, SCHEDULERS, load_config
from hpcsweep.tracking.tags import PRECISION_USED, logged_params
from hpcsweep.training.layerwise import Lamb, Lars
from hpcsweep.training.optimizers import (
    LR_SCALING_RULES,
    OPTIMIZER_CLASSES,
    build_optimizer,
    parameter_groups,
    scaled_lr,
)
from hpcsweep.training.schedules import SCHEDULE_BUILDERS, build_scheduler

MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop", "lars")
# Each optimizer's lr for the toy regression; LARS's trust ratio (eta = 0.001) shrinks its
# steps to about lr * eta * ||w||, hence its large lr.
TOY_PROBLEM_LR = {
    "sgd": 0.1,
    "adam": 0.1,
    "adamw": 0.1,
    "rmsprop": 0.01,
    "adagrad": 0.5,
    "lars": 20.0,
    "lamb": 0.1,
}


def assert_one_line_error_naming(error: pytest.ExceptionInfo[ValueError], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_config_choice_names_are_what_the_builders_can_build() -> None:
    # same order too: an unknown name's error lists the valid names in the order config.py does
    assert LR_SCALINGS == tuple(LR_SCALING_RULES)
    assert OPTIMIZERS == tuple(OPTIMIZER_CLASSES)
    assert SCHEDULERS == tuple(SCHEDULE_BUILDERS)


@pytest.mark.parametrize(
    "rule, batch_size, expected",
    [
        ("linear", 512, 0.2),
        ("linear", 128, 0.05),
        ("sqrt", 1024, 0.2),
        ("sqrt", 64, 0.05),
        ("none", 1024, 0.1),
    ],
)
def test_scaled_lr_follows_rule(rule: str, batch_size: int, expected: float) -> None:
    assert scaled_lr(0.1, batch_size, 256, rule) == pytest.approx(expected)


def test_scaled_lr_is_identity_at_base_batch_size() -> None:
    for rule in LR_SCALINGS:
        assert scaled_lr(0.1, 256, 256, rule) == pytest.approx(0.1)


def test_unknown_scaling_rule_is_a_value_error() -> None:
    with pytest.raises(ValueError) as raised:
        scaled_lr(0.1, 512, 256, "quadratic")
    assert_one_line_error_naming(raised, "'quadratic'", ", ".join(LR_SCALINGS))


class NormZoo(nn.Module):
    """One of each layer kind whose parameters `parameter_groups` must sort."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.batch_norm = nn.BatchNorm2d(4)
        self.group_norm = nn.GroupNorm(2, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.linear = nn.Linear(4, 4)
        self.bias_free = nn.Linear(4, 4, bias=False)


def ids(parameters: list[nn.Parameter]) -> set[int]:
    return {id(parameter) for parameter in parameters}


def test_parameter_groups_exempt_norms_and_biases_from_decay() -> None:
    model = NormZoo()
    decayed, exempt = parameter_groups(model, weight_decay=5e-4, decay_norm_and_bias=False)
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    expected_decayed = [model.conv.weight, model.linear.weight, model.bias_free.weight]
    assert ids(decayed["params"]) == ids(expected_decayed)
    norms = (model.batch_norm, model.group_norm, model.layer_norm)
    expected_exempt = [model.conv.bias, model.linear.bias]
    expected_exempt += [parameter for norm in norms for parameter in norm.parameters()]
    assert ids(exempt["params"]) == ids(expected_exempt)


def test_parameter_groups_list_every_parameter_exactly_once() -> None:
    model = NormZoo()
    model.bias_free.weight = model.linear.weight  # tied weights must not be listed twice
    for decay_norm_and_bias in (False, True):
        groups = parameter_groups(model, 1e-4, decay_norm_and_bias)
        listed = [id(parameter) for group in groups for parameter in group["params"]]
        assert sorted(listed) == sorted(id(parameter) for parameter in model.parameters())


def test_parameter_groups_decay_everything_when_asked() -> None:
    model = NormZoo()
    (group,) = parameter_groups(model, weight_decay=5e-4, decay_norm_and_bias=True)
    assert group["weight_decay"] == 5e-4
    assert len(group["params"]) == len(list(model.parameters()))


def test_parameter_groups_drop_an_empty_group() -> None:
    groups = parameter_groups(nn.Linear(4, 4, bias=False), 1e-4, decay_norm_and_bias=False)
    assert [group["weight_decay"] for group in groups] == [1e-4]


def regression_losses(optimizer_name: str, steps: int = 20) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 8, generator=generator)
    targets = inputs @ torch.randn(8, 1, generator=generator)
    torch.manual_seed(0)
    # No bias: LARS leaves no-decay parameters unadapted, and a bias at LARS's large lr diverges.
    model = nn.Linear(8, 1, bias=False)
    momentum = 0.9 if optimizer_name in MOMENTUM_OPTIMIZERS else 0.0
    groups = parameter_groups(model, 1e-4, decay_norm_and_bias=False)
    lr = TOY_PROBLEM_LR[optimizer_name]
    optimizer = build_optimizer(groups, optimizer_name, lr, momentum, False, 1e-4)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_loss(name: str) -> None:
    losses = regression_losses(name)
    assert math.isfinite(losses[-1])
    assert losses[-1] < 0.5 * losses[0]


def single_tensor_step(
    optimizer_class: type[torch.optim.Optimizer],
    weight: list[float],
    gradient: list[float],
    **options: float,
) -> torch.Tensor:
    """The change one step of `optimizer_class` makes to a parameter with the given values."""
    # float64 so the tiny LARS steps survive the subtraction from a weight of size ~5.
    initial = torch.tensor(weight, dtype=torch.float64)
    parameter = nn.Parameter(initial.clone())
    parameter.grad = torch.tensor(gradient, dtype=torch.float64)
    optimizer_class([parameter], **options).step()
    return parameter.detach() - initial


def test_lars_scales_step_by_trust_ratio() -> None:
    # ||w|| = 5, ||g|| = 2: ratio = 0.001 * 5 / (2 + 0.1 * 5) = 0.002 on g + wd * w = [0.3, 2.4].
    step = single_tensor_step(Lars, [3.0, 4.0], [0.0, 2.0], lr=1.0, momentum=0.0, weight_decay=0.1)
    assert step == pytest.approx(torch.tensor([-0.0006, -0.0048], dtype=torch.float64))


def test_lars_leaves_no_decay_parameters_unadapted() -> None:
    lars_step = single_tensor_step(Lars, [3.0, 4.0], [0.0, 2.0], lr=0.5, momentum=0.0)
    sgd_step = single_tensor_step(torch.optim.SGD, [3.0, 4.0], [0.0, 2.0], lr=0.5)
    assert lars_step == pytest.approx(sgd_step)


def test_lars_momentum_accumulates_like_sgd_on_unadapted_parameters() -> None:
    parameters = [nn.Parameter(torch.tensor([1.0, -1.0])) for _ in range(2)]
    lars = Lars([parameters[0]], lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD([parameters[1]], lr=0.1, momentum=0.9)
    for _ in range(3):
        for parameter, optimizer in zip(parameters, (lars, sgd)):
            parameter.grad = parameter.detach() * 2
            optimizer.step()
    assert parameters[0].detach() == pytest.approx(parameters[1].detach())


def test_lamb_step_has_norm_lr_times_weight_norm() -> None:
    # First step: update ~= sign(g) (Adam's), rescaled so its norm is ||w|| = 5.
    lamb_step = single_tensor_step(Lamb, [3.0, 4.0], [1.0, -2.0], lr=0.01)
    adam_step = single_tensor_step(torch.optim.Adam, [3.0, 4.0], [1.0, -2.0], lr=0.01)
    assert torch.linalg.vector_norm(lamb_step).item() == pytest.approx(0.01 * 5.0, rel=1e-4)
    trust = 5.0 / torch.linalg.vector_norm(adam_step / 0.01)
    assert lamb_step == pytest.approx(adam_step * trust, rel=1e-4)


def test_lamb_uses_ratio_one_for_zero_weights() -> None:
    lamb_step = single_tensor_step(Lamb, [0.0, 0.0], [1.0, -2.0], lr=0.01)
    adam_step = single_tensor_step(torch.optim.Adam, [0.0, 0.0], [1.0, -2.0], lr=0.01)
    assert lamb_step == pytest.approx(adam_step, rel=1e-4)


def test_build_optimizer_returns_requested_kind_with_settings() -> None:
    groups = parameter_groups(NormZoo(), 1e-4, decay_norm_and_bias=False)
    sgd = build_optimizer(groups, "sgd", 0.1, 0.9, True, 1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert all(group["nesterov"] and group["momentum"] == 0.9 for group in sgd.param_groups)
    assert [group["weight_decay"] for group in sgd.param_groups] == [1e-4, 0.0]
    assert isinstance(build_optimizer(groups, "lars", 1.0, 0.9, False, 1e-4), Lars)
    assert isinstance(build_optimizer(groups, "lamb", 1e-3, 0.0, False, 1e-4), Lamb)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_autologging_finds_no_param_of_the_run_in_the_optimizers_defaults(name: str) -> None:
    """MLflow's Lightning autologging logs `optimizer.defaults` (with `epochs` and `optimizer_name`)
    as params into a run that already holds hpcsweep's: the config's lr, momentum, nesterov and
    weight_decay, logged by hpcsweep or by `mlflow run` as typed (`1e-3`, `false`). MLflow refuses
    a param logged again with another value or spelling, and drops autologging's whole batch with
    it. So each group carries the settings the config gives, and the defaults keep only torch's."""
    groups = parameter_groups(NormZoo(), 5e-4, decay_norm_and_bias=False)
    for group in groups:
        group["lr"] = 0.4  # the lr scaled to the batch size, which is not the config's lr
    momentum = 0.9 if name in MOMENTUM_OPTIMIZERS else 0.0
    optimizer = build_optimizer(groups, name, 0.1, momentum, name == "sgd", 5e-4)
    run_params = {*logged_params(load_config(ROOT / "params.yaml")), PRECISION_USED}
    assert not run_params & {*optimizer.defaults, "epochs", "optimizer_name"}
    assert [group["lr"] for group in optimizer.param_groups] == [0.4, 0.4]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4, 0.0]
    if name in MOMENTUM_OPTIMIZERS:
        assert [group["momentum"] for group in optimizer.param_groups] == [0.9, 0.9]


# A user's optimizer settings (lr, momentum, weight decay, nesterov) are refused by config.py:
# see test_config.py. Here only a name no config could hold reaches the builder.
def test_unknown_optimizer_is_a_value_error_listing_valid_names() -> None:
    groups = [{"params": [nn.Parameter(torch.ones(1))]}]
    with pytest.raises(ValueError) as raised:
        build_optimizer(groups, "sgdd", 0.1, 0.9, False, 0.0)
    assert_one_line_error_naming(raised, "'sgdd'", ", ".join(OPTIMIZERS))


def scheduled_optimizer(optimizer_name: str, base_lrs: tuple[float, ...]) -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base_lrs]
    momentum = 0.9 if optimizer_name in MOMENTUM_OPTIMIZERS else 0.0
    return build_optimizer(groups, optimizer_name, 1.0, momentum, False, 0.0)


def lr_curve(
    name: str,
    total_steps: int,
    warmup_steps: int,
    base_lrs: tuple[float, ...] = (1.0,),
    optimizer_name: str = "sgd",
) -> torch.Tensor:
    """The lr each group trains with at each step: a (total_steps, groups) tensor."""
    optimizer = scheduled_optimizer(optimizer_name, base_lrs)
    scheduler = build_scheduler(optimizer, name, total_steps, warmup_steps)
    curve = []
    for _ in range(total_steps):
        curve.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return torch.tensor(curve, dtype=torch.float64)


@pytest.mark.parametrize("name", ["constant", "cosine", "step"])
def test_warmup_rises_linearly_to_base_lr(name: str) -> None:
    curve = lr_curve(name, total_steps=100, warmup_steps=10)[:, 0]
    expected = torch.arange(1, 11, dtype=torch.float64) / 10
    assert curve[:10] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["constant", "cosine", "step"])
def test_no_warmup_starts_at_base_lr(name: str) -> None:
    assert lr_curve(name, total_steps=100, warmup_steps=0)[0, 0] == pytest.approx(1.0)


def test_constant_stays_at_base_lr_after_warmup() -> None:
    curve = lr_curve("constant", total_steps=100, warmup_steps=10, base_lrs=(1.0, 0.3))
    assert (curve[10:] == torch.tensor([1.0, 0.3], dtype=torch.float64)).all()


def test_cosine_decays_from_base_lr_to_zero() -> None:
    curve = lr_curve("cosine", total_steps=100, warmup_steps=10)[:, 0]
    after_warmup = curve[10:]
    assert after_warmup[0] == pytest.approx(1.0)
    assert after_warmup[45] == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert (after_warmup.diff() <= 0).all()
    assert after_warmup[-1] < 1e-3


def test_step_drops_tenfold_at_half_and_three_quarters() -> None:
    curve = lr_curve("step", total_steps=100, warmup_steps=10)[:, 0]
    assert curve[10:50] == pytest.approx(torch.ones(40, dtype=torch.float64))
    assert curve[50:75] == pytest.approx(torch.full((25,), 0.1, dtype=torch.float64))
    assert curve[75:] == pytest.approx(torch.full((25,), 0.01, dtype=torch.float64))


def test_onecycle_peaks_at_each_group_lr_when_warmup_ends() -> None:
    curve = lr_curve("onecycle", total_steps=100, warmup_steps=10, base_lrs=(1.0, 0.5))
    assert curve.max(dim=0).values == pytest.approx(torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert curve.argmax(dim=0).tolist() == [9, 9]
    assert curve[0] == pytest.approx(torch.tensor([1.0, 0.5], dtype=torch.float64) / 25)
    assert (curve[-1] < 1e-3).all()


def test_onecycle_without_warmup_peaks_at_thirty_percent() -> None:
    curve = lr_curve("onecycle", total_steps=100, warmup_steps=0)[:, 0]
    assert curve.argmax().item() == 29


def test_onecycle_keeps_configured_momentum_and_works_without_momentum() -> None:
    optimizer = scheduled_optimizer("sgd", (1.0,))
    scheduler = build_scheduler(optimizer, "onecycle", total_steps=10, warmup_steps=2)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert lr_curve("onecycle", 10, 2, optimizer_name="adagrad").max() == pytest.approx(1.0)


def test_scheduler_state_survives_a_checkpoint_round_trip() -> None:
    optimizer = scheduled_optimizer("sgd", (1.0,))
    scheduler = build_scheduler(optimizer, "cosine", total_steps=100, warmup_steps=10)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    resumed_optimizer = scheduled_optimizer("sgd", (1.0,))
    resumed = build_scheduler(resumed_optimizer, "cosine", total_steps=100, warmup_steps=10)
    resumed.load_state_dict(torch.load(buffer))
    optimizer.step()
    scheduler.step()
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())


@pytest.mark.parametrize(
    "total_steps, warmup_steps, named",
    [(0, 0, "got 0"), (10, -1, "got -1"), (10, 10, "got 10"), (10, 11, "got 11")],
)
def test_bad_step_counts_are_value_errors(total_steps: int, warmup_steps: int, named: str) -> None:
    with pytest.raises(ValueError) as raised:
        build_scheduler(scheduled_optimizer("sgd", (1.0,)), "cosine", total_steps, warmup_steps)
    assert_one_line_error_naming(raised, named)


def test_unknown_scheduler_is_a_value_error_listing_valid_names() -> None:
    with pytest.raises(ValueError) as raised:
        build_scheduler(scheduled_optimizer("sgd", (1.0,)), "linear", 100, 10)
    assert_one_line_error_naming(raised, "'linear'", ", ".join(SCHEDULERS))

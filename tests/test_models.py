"""Checks that every registered model fits CIFAR-10 shapes, matches its published size and trains.

Sweeps pick models by name and compare them by cost, so a wrong output shape, a model that
silently has a different parameter count from the paper, or one that does not learn would
invalidate every result built on it.
"""

import pytest
import torch
from torch import nn

from hpcsweep.config import MODEL_NAMES
from hpcsweep.models import MODELS, build_model

# Published sizes: He et al. 2016 table 6 (CIFAR ResNets); kuangliu/pytorch-cifar ResNet-18.
PUBLISHED_PARAMETER_COUNTS = {
    "resnet20": 0.27e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet18": 11.2e6,
}


def cifar_batch(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_returns_same_logits_in_both_memory_formats(name: str) -> None:
    torch.manual_seed(0)  # an untrained deep net's logits grow with depth; keep them the same whatever ran before
    model = build_model(name).eval()
    images = cifar_batch()
    with torch.no_grad():
        logits = model(images)
        model.to(memory_format=torch.channels_last)
        channels_last_logits = model(images.to(memory_format=torch.channels_last))
    assert logits.shape == channels_last_logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, channels_last_logits, rtol=1e-4, atol=1e-5)


def test_num_classes_sets_output_width() -> None:
    with torch.no_grad():
        logits = build_model("resnet20", num_classes=100)(cifar_batch())
    assert logits.shape == (2, 100)


@pytest.mark.parametrize("name, published", PUBLISHED_PARAMETER_COUNTS.items())
def test_parameter_count_matches_published_figure(name: str, published: float) -> None:
    assert parameter_count(build_model(name)) == pytest.approx(published, rel=0.03)


def test_deeper_cifar_resnets_are_larger() -> None:
    depths = (20, 32, 44, 56, 110)
    counts = [parameter_count(build_model(f"resnet{depth}")) for depth in depths]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_config_model_names_are_the_registry_sorted() -> None:
    # config.py owns the names so that validating a config never imports torch; they must stay in step
    assert MODEL_NAMES == tuple(sorted(MODELS))
    cifar_depths = ("resnet110", "resnet20", "resnet32", "resnet44", "resnet56")
    assert set(MODEL_NAMES) == {*cifar_depths, "resnet18", "resnet34", "resnet9"}


def test_each_build_is_a_fresh_model() -> None:
    first, second = build_model("resnet20"), build_model("resnet20")
    assert first is not second
    assert first.classifier.weight.data_ptr() != second.classifier.weight.data_ptr()


def test_every_conv_has_its_own_batchnorm() -> None:
    for name in MODEL_NAMES:
        modules = list(build_model(name).modules())
        convs = sum(isinstance(module, nn.Conv2d) for module in modules)
        norms = sum(isinstance(module, nn.BatchNorm2d) for module in modules)
        assert convs == norms, name


def test_unknown_model_is_a_value_error_listing_valid_names() -> None:
    # config.py refuses a user's unknown model; reaching build_model with one is a programming error
    with pytest.raises(ValueError) as raised:
        build_model("resnet1000")
    message = str(raised.value)
    assert "'resnet1000'" in message
    assert ", ".join(MODEL_NAMES) in message
    assert "\n" not in message


def test_resnet20_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20")
    images = cifar_batch(batch_size=8)
    labels = torch.arange(8) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

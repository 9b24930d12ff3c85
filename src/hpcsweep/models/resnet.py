"""The ResNet family the sweeps train on CIFAR-10, looked up by name.

Sweeps name their model in a config, so every architecture lives in one registry, `MODELS`,
and `build_model` turns a name into a fresh `nn.Module`. Three lineages are covered:

- `resnet20/32/44/56/110`: He et al. 2016 ("Deep Residual Learning", section 4.2) CIFAR
  networks: 3 stages of 16/32/64 channels with (depth - 2) / 6 basic blocks each. Shortcuts
  that change shape use the paper's option A (subsample + zero-pad channels, no parameters),
  which is what its published parameter counts (0.27M ... 1.7M) assume.
- `resnet18/34`: the common CIFAR adaptation of the ImageNet networks (kuangliu/pytorch-cifar):
  3x3 stem, no max-pool, 4 stages of 64/128/256/512 channels, option-B 1x1 conv projections.
- `resnet9`: the DAWNBench ResNet-9 by David Page (myrtle.ai), logits scaled by 0.125.

All models are plain `torch.nn` (no Lightning), use BatchNorm after every conv, Kaiming-init
their convs, take N x 3 x 32 x 32 input in either memory format and return N x classes logits.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

ShortcutFactory = Callable[[int, int, int], nn.Module]
"""Builds the shortcut for a block from (in_channels, out_channels, stride)."""


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every `stride`-th pixel and append zero channels; no parameters."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subsampled = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads trailing dims first: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(subsampled, (0, 0, 0, 0, 0, self.extra_channels))


def zero_pad_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ZeroPadShortcut(out_channels - in_channels, stride)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the sum (He et al. 2016, fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: ShortcutFactory) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


def basic_block_stages(
    stage_widths: tuple[int, ...], blocks_per_stage: tuple[int, ...], shortcut: ShortcutFactory
) -> nn.Sequential:
    """The blocks of all stages in order; each stage after the first halves the resolution."""
    blocks: list[nn.Module] = []
    in_channels = stage_widths[0]
    for stage_index, (width, block_count) in enumerate(zip(stage_widths, blocks_per_stage, strict=True)):
        for block_index in range(block_count):
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            blocks.append(BasicBlock(in_channels, width, stride, shortcut))
            in_channels = width
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem conv, stages of basic blocks (each later stage halves resolution), pool, linear.

    Both the He et al. CIFAR networks and the kuangliu ResNet-18/34 are this shape; they differ
    only in stage widths, blocks per stage and shortcut type.
    """

    def __init__(
        self,
        stage_widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        shortcut: ShortcutFactory,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, stage_widths[0])
        self.stages = basic_block_stages(stage_widths, blocks_per_stage, shortcut)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stage_widths[-1], num_classes)
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(features, 1))


class Residual(nn.Module):
    """x + f(x) with no activation after the sum, as in the ResNet-9 residual branches."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResNet9(nn.Module):
    """DAWNBench ResNet-9 (Page, "How to train your ResNet", myrtle.ai 2018).

    `logit_scale` defaults to the original's 0.125: it damps the logits so that the large
    learning rates of the fast schedule do not saturate the softmax early on.
    """

    def __init__(self, num_classes: int, logit_scale: float = 0.125) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_relu(3, 64),
            conv_bn_relu(64, 128),
            nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn_relu(128, 128), conv_bn_relu(128, 128))),
            conv_bn_relu(128, 256),
            nn.MaxPool2d(2),
            conv_bn_relu(256, 512),
            nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn_relu(512, 512), conv_bn_relu(512, 512))),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(512, num_classes, bias=False)
        self.logit_scale = logit_scale
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x)) * self.logit_scale


def kaiming_init_convs(model: nn.Module) -> None:
    # fan_out keeps the backward-pass gradient variance steady through ReLU stacks (He et al. 2015).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def cifar_resnet(depth: int, num_classes: int) -> ResNet:
    """He et al. 2016 CIFAR ResNet of the given depth (6n + 2 layers)."""
    blocks = (depth - 2) // 6
    return ResNet((16, 32, 64), (blocks,) * 3, zero_pad_shortcut, num_classes)


def kuangliu_resnet(blocks_per_stage: tuple[int, ...], num_classes: int) -> ResNet:
    """CIFAR adaptation of the ImageNet ResNet-18/34 (kuangliu/pytorch-cifar)."""
    return ResNet((64, 128, 256, 512), blocks_per_stage, projection_shortcut, num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{f"resnet{depth}": partial(cifar_resnet, depth) for depth in (20, 32, 44, 56, 110)},
    "resnet18": partial(kuangliu_resnet, (2, 2, 2, 2)),
    "resnet34": partial(kuangliu_resnet, (3, 4, 6, 3)),
    "resnet9": ResNet9,
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model `name` with `num_classes` outputs.

    A user's model name is validated against config.MODEL_NAMES (a test keeps it equal to
    `MODELS`), so an unknown name here is a programming error.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes)

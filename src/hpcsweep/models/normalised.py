"""A trained network that takes images as a user has them: float RGB in [0, 1], N x 3 x 32 x 32.

The training feeds the network images normalised with the prepared data's per-channel mean and
std (stats.json). The MLflow model a finished training logs must not need that file to be used:
a user who loads `runs:/<run id>/model` and passes images as torchvision's `ToTensor` gives them
would otherwise get wrong answers without any error. So the logged model is the network behind
this normalisation, its mean and std held as buffers that torch.export keeps in the graph.
"""

from __future__ import annotations

import torch
from torch import nn


class NormalisedInput(nn.Module):
    def __init__(self, network: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)

"""The precision plugin a training runs under: the one the config names, on the CPU as on a GPU.

Given `precision="16-mixed"` on the CPU, Lightning silently trains in bf16-mixed instead, so fp16
with loss scaling, the precision GPUs older than Ampere (P100, V100) train in, could never be
tested without a GPU. Building the plugin here gives fp16 autocast and a GradScaler on either
device (CPU autocast supports float16). Under the module's manual optimization, each
micro-batch's `manual_backward` scales its loss; the optimizer step then unscales the
accumulated gradients once, before the optimizer sees them (so LARS and LAMB compute their
trust ratios from true gradients), skips a step whose gradients overflowed and adapts the scale.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from hpcsweep.hardware.gpus import trains_on_cuda


def precision_plugin(precision: str, accelerator: str) -> Precision:
    """Lightning's plugin for `precision` ("32-true", "bf16-mixed", "16-mixed") on the device the
    config's `accelerator` trains on."""
    if precision == "32-true":
        return Precision()
    device_type = "cuda" if trains_on_cuda(accelerator) else "cpu"
    scaler = torch.amp.GradScaler(device_type) if precision == "16-mixed" else None
    return MixedPrecision(precision, device_type, scaler)

"""Model FLOPs utilisation (MFU): the FLOPs a model needs per image, and what the GPU could do at most.

Images per second alone cannot say whether a set-up uses its GPUs well: ResNet-18 at 5,000 images/s
keeps an H100 busier than ResNet-20 at 20,000. MFU can: achieved training FLOP/s (3 x forward
FLOPs per image, the usual forward + backward estimate, x images/s) over the devices' peak for
the number format the training computes in.

FLOPs are counted with torch's own counter on the meta device (shapes only: no computation, no
memory, nothing of a live model touched). The counter counts convolutions and matrix products,
2 FLOPs per multiply-accumulate, as the datasheets' peaks do; BatchNorm, ReLU and pooling are
left out, as in every published MFU. Peaks are dense (no structured sparsity) figures from NVIDIA's
datasheets; a GPU missing from the table, or a number format it lacks, has no peak: MFU is then
unknown, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

FORWARD_AND_BACKWARD = 3  # backward costs about twice the forward (gradients of inputs and of weights)


@dataclass(frozen=True)
class PeakTflops:
    """Dense peak TFLOP/s per number format; None where the GPU has no hardware for it."""

    fp32: float
    tf32: float | None
    fp16: float
    bf16: float | None


# Matched in order against the name torch reports (torch.cuda.get_device_name); the first match
# wins, so a variant comes before the plain name it contains. Datasheets list Ampere and Hopper
# tensor-core figures "with sparsity"; the dense figures here are half of those.
PEAK_TFLOPS: tuple[tuple[str, PeakTflops], ...] = (
    # Tesla P100 datasheet (NVIDIA, 2016): PCIe 9.3 / 18.7, SXM2 (NVLink) 10.6 / 21.2 TFLOPS fp32 / fp16
    (r"P100-PCIE", PeakTflops(fp32=9.3, tf32=None, fp16=18.7, bf16=None)),
    (r"P100-SXM2", PeakTflops(fp32=10.6, tf32=None, fp16=21.2, bf16=None)),
    # Tesla V100 datasheet (NVIDIA, 2020): fp32 / tensor; V100S PCIe 16.4 / 130, PCIe 14 / 112, SXM2 15.7 / 125
    (r"V100S-PCIE", PeakTflops(fp32=16.4, tf32=None, fp16=130.0, bf16=None)),
    (r"V100-PCIE", PeakTflops(fp32=14.0, tf32=None, fp16=112.0, bf16=None)),
    (r"V100-SXM2", PeakTflops(fp32=15.7, tf32=None, fp16=125.0, bf16=None)),
    # Tesla T4 datasheet (NVIDIA, 2019): fp32 8.1, mixed-precision fp16 65 TFLOPS
    (r"\bT4\b", PeakTflops(fp32=8.1, tf32=None, fp16=65.0, bf16=None)),
    # A100 datasheet (NVIDIA, 2021), PCIe and SXM4, 40 and 80 GB alike: fp32 19.5, tf32 156, bf16/fp16 312
    (r"A100", PeakTflops(fp32=19.5, tf32=156.0, fp16=312.0, bf16=312.0)),
    # A10 datasheet (NVIDIA, 2021): fp32 31.2, tf32 62.5, bf16/fp16 125
    (r"\bA10\b", PeakTflops(fp32=31.2, tf32=62.5, fp16=125.0, bf16=125.0)),
    # L40S datasheet (NVIDIA, 2023): fp32 91.6, tf32 183, bf16/fp16 362.05
    (r"L40S", PeakTflops(fp32=91.6, tf32=183.0, fp16=362.05, bf16=362.05)),
    # H100 datasheet (NVIDIA, 2023): PCIe fp32 51, tf32 756*, bf16/fp16 1513*; NVL 60, 835*, 1671*;
    # SXM ("H100 80GB HBM3") 67, 989*, 1979* (* with sparsity)
    (r"H100 PCIe", PeakTflops(fp32=51.0, tf32=378.0, fp16=756.5, bf16=756.5)),
    (r"H100 NVL", PeakTflops(fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5)),
    (r"H100", PeakTflops(fp32=67.0, tf32=494.5, fp16=989.5, bf16=989.5)),
    # H200 datasheet (NVIDIA, 2024): NVL fp32 60, tf32 835*, bf16/fp16 1671*; SXM (and GH200) as H100 SXM
    (r"H200 NVL", PeakTflops(fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5)),
    (r"H200", PeakTflops(fp32=67.0, tf32=494.5, fp16=989.5, bf16=989.5)),
)

NUMBER_FORMATS = {"32-true": "fp32", "16-mixed": "fp16", "bf16-mixed": "bf16"}


def peak_tflops(device_name: str) -> PeakTflops | None:
    """The table's row for a GPU named as torch names it; None for a GPU the table does not know."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def number_format(precision: str, tf32_convolutions: bool) -> str:
    """What the convolutions, nearly all of a ResNet's FLOPs, compute in under a Lightning precision.

    In `32-true` cuDNN runs convolutions in TF32 on GPUs that have it, unless
    `torch.backends.cudnn.allow_tf32` was turned off (it is on by default)."""
    if precision not in NUMBER_FORMATS:
        raise ValueError(f"no number format known for precision {precision!r}; known: {', '.join(NUMBER_FORMATS)}")
    fmt = NUMBER_FORMATS[precision]
    return "tf32" if fmt == "fp32" and tf32_convolutions else fmt


def peak_flops_per_s(device_name: str, precision: str, tf32_convolutions: bool = True) -> float | None:
    """One device's dense peak FLOP/s for `precision`; None where it is not known."""
    peak = peak_tflops(device_name)
    if peak is None:
        return None
    fmt = number_format(precision, tf32_convolutions)
    tflops = getattr(peak, fmt)
    if tflops is None and fmt == "tf32":
        tflops = peak.fp32  # a GPU without TF32 (before Ampere) computes such convolutions in fp32
    return tflops * 1e12 if tflops is not None else None


def forward_flops(model: torch.nn.Module, image_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """FLOPs of one forward pass of `model` over one image, in eval mode (BatchNorm's running
    statistics stay as they are). A model built on the meta device costs no computation."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_flops_utilisation(forward_flops_per_image: float, images_per_s: float, peak: float) -> float:
    """Achieved training FLOP/s over `peak`, the peak FLOP/s of all devices together."""
    return FORWARD_AND_BACKWARD * forward_flops_per_image * images_per_s / peak

"""A ResNetModule trained on a few fixed tensors by a bare Lightning Trainer.

The module's own steps (micro-batches, manual optimization, the precision plugin, out-of-memory
retries) without data files, MLflow or checkpoints, so a test of them takes seconds. Images are
8x8 (the ResNets pool adaptively): a sixteenth of CIFAR-10's compute, which matters for fp16 and
bf16 autocast, many times slower than fp32 on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from torch.utils.data import DataLoader, TensorDataset

from hpcsweep.config import load_config
from hpcsweep.training.module import ResNetModule


def learnable_batch(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` 8x8 images, each its class's fixed random picture plus noise: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = prototypes[labels] + 0.5 * torch.randn(count, 3, 8, 8, generator=generator)
    return images.contiguous(memory_format=torch.channels_last), labels


def module_for(project: Path, *assignments: str) -> ResNetModule:
    """The module the project's params.yaml gives, with `assignments` as `-s` overrides, seeded."""
    config = load_config(project / "params.yaml", ["accelerator=cpu", "warmup_epochs=0", *assignments])
    torch.manual_seed(0)
    return ResNetModule.from_config(config.train)


def fit(
    module: ResNetModule, images, labels, steps: int, plugin: Precision, callbacks=(), validate: bool = False
) -> L.Trainer:
    """`steps` optimizer steps, each over the whole of `images` (one batch, one epoch per step),
    and, if `validate`, a validation of the same batch after each."""
    batches = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        plugins=[plugin],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    trainer.fit(module, batches, batches if validate else None)
    return trainer


def parameters_of(module: ResNetModule) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}

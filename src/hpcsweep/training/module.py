"""The LightningModule: one ResNet, its loss and accuracy, its optimizer, and its micro-batches.

Each training step receives this rank's whole share of the effective batch (batch_size /
world_size) and runs it as micro-batches whose gradients accumulate before the single optimizer
step, so the effective batch never depends on how much memory the device has:
- `micro_batch_size: auto` is chosen in `setup` by probing the real step on this rank's device;
  all DDP ranks then take the smallest choice, so they step in lockstep;
- if a step still runs out of memory (fragmentation, a larger eval batch), its gradients are
  dropped, the micro-batch halved and the same step run again: same data, same effective batch,
  same run, one more `oom_retries`.
Optimization is manual for that reason; gradients are synchronised across ranks only on the
last micro-batch of a step.

The optimizer is built with the configured (unscaled) `lr` as its default and the scaled LR on
each parameter group, so that MLflow's autologging, which logs the optimizer's defaults as
params, records the same `lr` the config names instead of clashing with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from hpcsweep.config import TrainConfig
from hpcsweep.errors import UserError
from hpcsweep.models import build_model
from hpcsweep.training.batch_plan import divisors
from hpcsweep.training.optimizers import build_optimizer, parameter_groups, scaled_lr
from hpcsweep.training.probe import Probe, probe_micro_batch
from hpcsweep.training.schedules import build_scheduler

NUM_CLASSES = 10


def share_of_batch_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    """A micro-batch's summed loss divided by the whole batch size: accumulating the gradients
    of every micro-batch's share gives exactly the gradient of the batch's mean loss."""
    return F.cross_entropy(model(images), labels, reduction="sum") / batch


class ResNetModule(L.LightningModule):
    def __init__(self, train: dict) -> None:
        super().__init__()
        self.save_hyperparameters()  # the checkpoint carries the config it was trained with
        self.automatic_optimization = False
        self.config = TrainConfig(**train)
        self.model = build_model(self.config.model, NUM_CLASSES).to(memory_format=torch.channels_last)
        self.val_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.micro_batch_size: int | None = None
        self.oom_retries = 0
        self.probe: Probe | None = None
        self.probe_spread: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, config: TrainConfig) -> ResNetModule:
        return cls(dataclasses.asdict(config))

    @property
    def per_rank_batch_size(self) -> int:
        return self.config.batch_size // self.trainer.world_size

    @property
    def accumulate_grad_batches(self) -> int:
        return self.per_rank_batch_size // self.micro_batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def setup(self, stage: str) -> None:
        if self.config.micro_batch_size != "auto":
            self.micro_batch_size = self.config.micro_batch_size
            return
        device = self.trainer.strategy.root_device
        self.probe = probe_micro_batch(
            self.fresh_model_and_optimizer,
            device,
            self.per_rank_batch_size,
            self.config.precision,
            self.config.memory_limit_mb,
            self.config.memory_margin,
        )
        choices = self.trainer.strategy.all_gather(torch.tensor(self.probe.micro_batch_size, device=device))
        self.micro_batch_size = int(choices.min())
        self.probe_spread = (int(choices.min()), int(choices.max()))  # differs when ranks' devices differ

    def fresh_model_and_optimizer(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        device = self.trainer.strategy.root_device
        model = build_model(self.config.model, NUM_CLASSES).to(device, memory_format=torch.channels_last)
        return model, self.make_optimizer(model)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        config = self.config
        lr = scaled_lr(config.lr, config.batch_size, config.base_batch_size, config.lr_scaling)
        groups = parameter_groups(model, config.weight_decay, config.decay_norm_and_bias)
        for group in groups:
            group["lr"] = lr
        return build_optimizer(
            groups, config.optimizer, config.lr, config.momentum, config.nesterov, config.weight_decay
        )

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model)
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup_steps = round(self.config.warmup_epochs * total_steps / self.config.max_epochs)
        scheduler = build_scheduler(optimizer, self.config.scheduler, total_steps, min(warmup_steps, total_steps - 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch, batch_index: int) -> None:
        optimizer = self.optimizers()
        images, labels = batch
        losses = self.in_micro_batches(images, labels, self.backward_micro_batch, on_retry=optimizer.zero_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self.log("train/loss", torch.stack(losses).sum() / len(labels), on_step=False, on_epoch=True, sync_dist=True)
        # the plan as it ended the epoch: an out-of-memory retry can shrink it mid-epoch
        self.log("micro_batch_size", float(self.micro_batch_size), on_step=False, on_epoch=True, reduce_fx="min")
        for name in ("accumulate_grad_batches", "oom_retries"):
            self.log(name, float(getattr(self, name)), on_step=False, on_epoch=True, reduce_fx="max")

    def backward_micro_batch(self, images: torch.Tensor, labels: torch.Tensor, last: bool) -> torch.Tensor:
        """Forward and backward one micro-batch; its loss is scaled so the step averages the whole batch."""
        blocked = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        with contextlib.nullcontext() if last else blocked():
            loss = share_of_batch_loss(self, images, labels, self.per_rank_batch_size)
            self.manual_backward(loss)
        return loss.detach() * self.per_rank_batch_size

    def validation_step(self, batch, batch_index: int) -> None:
        images, labels = batch
        logits = torch.cat(self.in_micro_batches(images, labels, lambda x, y, _last: self(x)))
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True)
        self.val_accuracy(logits, labels)
        self.log("val/acc", self.val_accuracy, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["oom_retries"] = self.oom_retries

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.oom_retries = checkpoint.get("oom_retries", 0)

    def in_micro_batches(self, images, labels, run: Callable, on_retry: Callable = lambda: None) -> list:
        """`run` over consecutive micro-batches; on out-of-memory, halve them and start the batch over."""
        while True:
            size = self.micro_batch_size
            try:
                return [
                    run(images[i : i + size], labels[i : i + size], i + size >= len(labels))
                    for i in range(0, len(labels), size)
                ]
            except torch.OutOfMemoryError:
                on_retry()
                self.halve_micro_batch()

    def halve_micro_batch(self) -> None:
        smaller = [d for d in divisors(self.per_rank_batch_size) if d <= self.micro_batch_size // 2]
        if not smaller:
            raise UserError(
                f"out of memory at micro_batch_size=1 on {self.trainer.strategy.root_device}; "
                f"use a smaller model or precision=bf16-mixed"
            )
        self.micro_batch_size = smaller[-1]
        self.oom_retries += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

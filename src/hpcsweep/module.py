"""The LightningModule: one ResNet, its loss and accuracy, its optimizer and schedule.

Everything a study varies arrives as the validated `TrainConfig`; nothing here reads files or
talks to MLflow. The optimizer is built with the configured (unscaled) `lr` as its default and
the scaled LR on each parameter group, so that MLflow's autologging, which logs the optimizer's
defaults as params, records the same `lr` the config names instead of clashing with it.
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from hpcsweep.config import TrainConfig
from hpcsweep.models import build_model
from hpcsweep.optim import build_optimizer, build_scheduler, parameter_groups, scaled_lr

NUM_CLASSES = 10


class ResNetModule(L.LightningModule):
    def __init__(self, train: dict) -> None:
        super().__init__()
        self.save_hyperparameters()  # the checkpoint carries the config it was trained with
        self.config = TrainConfig(**train)
        self.model = build_model(self.config.model, NUM_CLASSES).to(memory_format=torch.channels_last)
        self.val_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    @classmethod
    def from_config(cls, config: TrainConfig) -> ResNetModule:
        return cls(dataclasses.asdict(config))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_index: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True)
        self.val_accuracy(logits, labels)
        self.log("val/acc", self.val_accuracy, on_epoch=True)

    def configure_optimizers(self):
        config = self.config
        lr = scaled_lr(config.lr, config.batch_size, config.base_batch_size, config.lr_scaling)
        groups = parameter_groups(self.model, config.weight_decay, config.decay_norm_and_bias)
        for group in groups:
            group["lr"] = lr
        optimizer = build_optimizer(groups, config.optimizer, config.lr, config.momentum, config.nesterov,
                                    config.weight_decay)
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup_steps = round(config.warmup_epochs * total_steps / config.max_epochs)
        scheduler = build_scheduler(optimizer, config.scheduler, total_steps, min(warmup_steps, total_steps - 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

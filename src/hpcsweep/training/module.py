"""The LightningModule: one ResNet, its loss and accuracy, its optimizer, and its micro-batches.

Each training step receives this rank's whole share of the effective batch (batch_size /
world_size) and runs it as micro-batches whose gradients accumulate before the single optimizer
step, so the effective batch never depends on how much memory the device has:
- `micro_batch_size: auto` is chosen in `setup` by probing the real step on this rank's device;
  all DDP ranks then take the smallest choice, so every rank runs the same micro-batches;
- if a step still runs out of memory (fragmentation, a larger eval batch), its gradients are
  dropped, the BatchNorm statistics its forwards moved put back, the micro-batch halved and the
  same step run again: same data, same effective batch, same run, one more `oom_retries`; the
  rerun step is exactly the step the smaller micro-batch would have taken.
Optimization is manual for that reason.

Under DDP the ranks agree on a retry in the same step. Every micro-batch runs with DDP's own
gradient sync blocked, so no collective runs inside a backward and an out-of-memory error cannot
leave the other ranks waiting mid-reduction; each rank catches its own. Then one all_reduce per
step (`RankExchange`) sums every rank's gradients, BatchNorm running statistics and a "this rank
ran out of memory" flag. If no rank ran out, the sums divided by the world size are the averaged
gradients DDP's sync would have given (and the ranks' mean statistics, where DDP copies rank
0's), and every rank takes the same optimizer step. If any rank ran out, every rank sees the same
count, so all of them rerun the step with the halved micro-batch; halving is a function of the
size all ranks share (agreed in `setup`, changed only here), so they stay equal without a second
collective, and at size 1 every rank raises the same UserError. One process needs no collective.
benchmarks/oom_agreement.py measures what the exchange costs against DDP's sync, which overlaps
with the backward.

Validation runs no collective between its micro-batches (its metrics are reduced at the end of
the epoch, which every rank reaches whatever its micro-batches were), so an out-of-memory error
there halves this rank's own validation micro-batch and nothing else: the training micro-batch
the ranks agreed on is untouched. It evaluates each of the data module's evaluation loaders:
the held-out validation split as `val/*` (what checkpoints and every other choice read) and the
test split as `test/*`, never used for a choice; a folder without a validation split has one
loader, its test split, logged as `val/*`.

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
from hpcsweep.training.probe import Probe, probe_micro_batch, release_cached_memory
from hpcsweep.training.schedules import build_scheduler

NUM_CLASSES = 10
EVALUATED_AS = ("val", "test")  # the metric prefix of each evaluation loader, in order (data/loader.py)


def share_of_batch_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    """A micro-batch's summed loss divided by the whole batch size: accumulating the gradients
    of every micro-batch's share gives exactly the gradient of the batch's mean loss."""
    return F.cross_entropy(model(images), labels, reduction="sum") / batch


def in_micro_batches(images: torch.Tensor, labels: torch.Tensor, size: int, run: Callable) -> list:
    """`run(images, labels)` over consecutive micro-batches of `size`."""
    return [run(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


class RankExchange:
    """The one collective of a DDP training step: every rank's gradients, float buffers (BatchNorm
    running statistics) and out-of-memory flag, summed by one all_reduce of one flat tensor.

    The flat tensor is allocated once, before training, like DDP's own buckets, so a rank that has
    just run out of memory can still take part without allocating anything.
    """

    def __init__(self, model: torch.nn.Module, world_size: int) -> None:
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.world_size = world_size
        sizes = [t.numel() for t in (*self.parameters, *self.buffers)]
        first = self.parameters[0]
        self.flat = torch.empty(sum(sizes) + 1, dtype=first.dtype, device=first.device)
        self.slots = self.flat[:-1].split(sizes)  # views: one per parameter, then one per buffer

    def ranks_out_of_memory(self, ran_out: bool) -> int:
        """How many ranks ran out of memory in this step; when none did, every parameter's
        gradient and every buffer is now its mean over the ranks."""
        if not ran_out:
            self.pack()
        self.flat[-1] = float(ran_out)
        torch.distributed.all_reduce(self.flat)
        ranks_out = round(self.flat[-1].item())
        if not ranks_out:
            self.flat.div_(self.world_size)
            self.unpack()
        return ranks_out

    def pack(self) -> None:
        for parameter, slot in zip(self.parameters, self.slots):
            if parameter.grad is None:  # not used by this rank's forward: contributes nothing
                slot.zero_()
            else:
                slot.view(parameter.shape).copy_(parameter.grad)
        for buffer, slot in zip(self.buffers, self.slots[len(self.parameters) :]):
            slot.view(buffer.shape).copy_(buffer)

    def unpack(self) -> None:
        for tensor, slot in zip((*(p.grad for p in self.parameters), *self.buffers), self.slots):
            if tensor is not None:
                tensor.copy_(slot.view(tensor.shape))


class ResNetModule(L.LightningModule):
    def __init__(self, train: dict) -> None:
        super().__init__()
        self.save_hyperparameters()  # the checkpoint carries the config it was trained with
        self.automatic_optimization = False
        self.config = TrainConfig(**train)
        self.model = build_model(self.config.model, NUM_CLASSES).to(memory_format=torch.channels_last)
        self.val_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.micro_batch_size: int | None = None  # the same on every rank
        self.val_micro_batch_size: int | None = None  # this rank's own, once its validation ran out of memory
        self.oom_retries = 0
        self.exchange: RankExchange | None = None
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

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            self.exchange = RankExchange(self.model, self.trainer.world_size)

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
        losses = self.agreed_micro_batches(images, labels, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self.log("train/loss", torch.stack(losses).sum() / len(labels), on_step=False, on_epoch=True, sync_dist=True)
        # the plan as it ended the epoch: an out-of-memory retry can shrink it mid-epoch
        self.log("micro_batch_size", float(self.micro_batch_size), on_step=False, on_epoch=True, reduce_fx="min")
        for name in ("accumulate_grad_batches", "oom_retries"):
            self.log(name, float(getattr(self, name)), on_step=False, on_epoch=True, reduce_fx="max")

    def agreed_micro_batches(self, images, labels, optimizer) -> list[torch.Tensor]:
        """The step's gradients over all ranks, its micro-batches halved and rerun (on every rank
        at once) until no rank runs out of memory; returns this rank's micro-batch losses.

        A rerun starts from the state the step started from: gradients dropped, and the BatchNorm
        running statistics the failed attempt's forwards had moved put back (a small copy)."""
        buffers_before = [buffer.clone() for buffer in self.model.buffers()]
        while True:
            losses = self.backward_all_micro_batches(images, labels)
            if losses is None:  # outside the `except`: the failed step's tensors are free by now
                release_cached_memory(self.device)
            ranks_out = self.ranks_out_of_memory(ran_out=losses is None)
            if not ranks_out:
                return losses
            optimizer.zero_grad(set_to_none=True)
            for buffer, before in zip(self.model.buffers(), buffers_before):
                buffer.copy_(before)
            world = self.trainer.world_size
            self.micro_batch_size = self.halved(self.micro_batch_size, f"on {ranks_out} of {world} rank(s)")
            self.oom_retries += 1

    def backward_all_micro_batches(self, images, labels) -> list[torch.Tensor] | None:
        """This rank's micro-batches, DDP's gradient sync blocked; None if it ran out of memory."""
        blocked = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        try:
            with blocked():
                return in_micro_batches(images, labels, self.micro_batch_size, self.backward_micro_batch)
        except torch.OutOfMemoryError:
            return None

    def ranks_out_of_memory(self, ran_out: bool) -> int:
        return self.exchange.ranks_out_of_memory(ran_out) if self.exchange else int(ran_out)

    def backward_micro_batch(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward and backward one micro-batch; its loss is scaled so the step averages the whole batch."""
        loss = share_of_batch_loss(self, images, labels, self.per_rank_batch_size)
        self.manual_backward(loss)
        return loss.detach() * self.per_rank_batch_size

    def validation_step(self, batch, batch_index: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        prefix = EVALUATED_AS[dataloader_idx]
        accuracy = self.val_accuracy if prefix == "val" else self.test_accuracy
        logits = torch.cat(self.validation_logits(images, labels))
        loss = F.cross_entropy(logits, labels)
        self.log(f"{prefix}/loss", loss, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        accuracy(logits, labels)
        self.log(f"{prefix}/acc", accuracy, on_epoch=True, add_dataloader_idx=False)

    def validation_logits(self, images, labels) -> list[torch.Tensor]:
        """Logits micro-batch by micro-batch; on out-of-memory this rank alone halves and reruns."""
        while True:
            size = min(self.micro_batch_size, self.val_micro_batch_size or self.micro_batch_size)
            try:
                return in_micro_batches(images, labels, size, lambda x, _y: self(x))
            except torch.OutOfMemoryError:
                pass
            release_cached_memory(self.device)
            self.val_micro_batch_size = self.halved(size, f"in validation on {self.device}")
            self.oom_retries += 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["oom_retries"] = self.oom_retries

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.oom_retries = checkpoint.get("oom_retries", 0)

    def halved(self, size: int, where: str) -> int:
        """The largest micro-batch that divides the per-rank batch and is at most half of `size`."""
        smaller = [d for d in divisors(self.per_rank_batch_size) if d <= size // 2]
        if not smaller:
            raise UserError(
                f"out of memory at micro_batch_size=1 {where}; use a smaller model or a 16-bit precision "
                f"(bf16-mixed, or 16-mixed on GPUs older than Ampere)"
            )
        return smaller[-1]

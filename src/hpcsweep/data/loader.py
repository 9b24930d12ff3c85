"""Feeding training: CIFAR-10 kept on the device, augmented a whole batch at a time.

CIFAR-10 is 180 MB as uint8, so it fits on any accelerator. Moving it there once and doing the
shuffling, cropping, flipping and normalising as batched tensor ops (as airbench does) removes
worker processes, host-to-device copies and per-image Python from the step: loading stops being
the bottleneck. The torchvision `DataLoader` path stays available (`data.loader: torchvision`)
so the two can be compared on the same prepared tensors.

Every epoch is evaluated on the held-out validation split (`val/*`) and on the test split
(`test/*`), in that order; a folder prepared with `val_size: 0` has no validation split, and its
test split is the one evaluation (`val/*`, as before the split existed).

Under DDP every rank draws the same seeded permutation and takes every world_size-th index from
it: disjoint shards of equal length, a new order each epoch, no sampler needed. The loader has
`state_dict`/`load_state_dict`, which Lightning saves in checkpoints, so a resumed epoch
continues with the batches it had not served (Lightning prefetches one batch, so a mid-epoch
save counts that one as served: at most one batch of the interrupted epoch is skipped).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hpcsweep.data.prepared import evaluation_splits, read_split
from hpcsweep.data.stats import read_stats

PAD = 4


def load_split(prepared_dir: Path, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_split(prepared_dir, split)
    return images[:limit], labels[:limit]


def load_stats(prepared_dir: Path) -> tuple[list[float], list[float]]:
    stats = read_stats(prepared_dir)
    return stats["mean"], stats["std"]


def random_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad every image by 4 pixels and cut a random 32x32 window from each, in one gather."""
    count, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (count,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * PAD + 1, (count,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceLoader:
    """Batches of (normalised float images, labels), drawn from tensors already on the device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: list[float],
        std: list[float],
        *,
        batch_size: int,
        train: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        device = images.device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batches_done = 0  # within the current epoch, for mid-epoch resume

    def shard(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in the order they are served."""
        count = len(self.labels)
        if self.train:
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
            order = order[: count - count % self.world_size]  # equal shards: DDP steps in lockstep
        else:
            order = torch.arange(count)
        return order[self.rank :: self.world_size]

    def served_indices(self) -> torch.Tensor:
        """The samples this rank has served so far in the current epoch."""
        return self.shard()[: self.batches_done * self.batch_size]

    def __len__(self) -> int:
        size = len(self.shard())
        return size // self.batch_size if self.train else -(-size // self.batch_size)

    def __iter__(self):
        if self.batches_done >= len(self):  # the last epoch was served to the end: start the next
            self.epoch, self.batches_done = self.epoch + 1, 0
        indices = self.shard().to(self.images.device)
        generator = torch.Generator(device=self.images.device)
        for number in range(self.batches_done, len(self)):
            batch = indices[number * self.batch_size : (number + 1) * self.batch_size]
            # one seed per batch: a resumed epoch draws the same crops and flips as an unbroken one
            generator.manual_seed(hash((self.seed, self.epoch, self.rank, number)) & 0x7FFF_FFFF)
            self.batches_done = number + 1
            yield self.normalise(self.augment(self.images[batch], generator)), self.labels[batch]

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.train:
            return images
        return random_flip(random_crop(images, generator), generator)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]


class TorchvisionSplit(Dataset):
    """The same prepared tensors through per-image torchvision transforms, for comparison."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, train: bool) -> None:
        from torchvision.transforms import v2

        steps = [v2.RandomCrop(32, padding=PAD), v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


class CIFAR10DataModule(L.LightningDataModule):
    """Prepared CIFAR-10 as Lightning dataloaders, on the device or through torchvision."""

    def __init__(
        self,
        prepared_dir: str,
        *,
        loader: str,
        batch_size: int,
        seed: int,
        limit_train_samples: int | None = None,
        workers: int = 2,
    ) -> None:
        """`batch_size` is this rank's share of the effective batch; the module splits it into micro-batches."""
        super().__init__()
        self.prepared_dir, self.loader, self.seed = Path(prepared_dir), loader, seed
        self.batch_size, self.limit, self.workers = batch_size, limit_train_samples, workers

    def setup(self, stage: str) -> None:
        stats = read_stats(self.prepared_dir)
        self.mean, self.std = stats["mean"], stats["std"]
        self.train_split = load_split(self.prepared_dir, "train", self.limit)
        self.evaluation_splits = [load_split(self.prepared_dir, split) for split in evaluation_splits(stats)]

    def device_loader(self, split: tuple[torch.Tensor, torch.Tensor], train: bool) -> DeviceLoader:
        device = self.trainer.strategy.root_device
        images, labels = (t.to(device) for t in split)
        return DeviceLoader(
            images,
            labels,
            self.mean,
            self.std,
            batch_size=self.batch_size,
            train=train,
            seed=self.seed,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )

    def torchvision_loader(self, split: tuple[torch.Tensor, torch.Tensor], train: bool) -> DataLoader:
        dataset = TorchvisionSplit(*split, self.mean, self.std, train)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        if self.loader == "torchvision":
            return self.torchvision_loader(self.train_split, train=True)
        return self.device_loader(self.train_split, train=True)

    def val_dataloader(self):
        """One loader per evaluation split: validation_step's dataloader_idx says which."""
        if self.loader == "torchvision":
            return [self.torchvision_loader(split, train=False) for split in self.evaluation_splits]
        return [self.device_loader(split, train=False) for split in self.evaluation_splits]

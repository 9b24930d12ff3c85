"""The device-resident loader: order, augmentation, normalisation, DDP shards, resume.

Training trusts `DeviceLoader` for everything a DataLoader and a DistributedSampler would
otherwise do, so a mistake here silently changes every result: a repeated order under a fixed
seed, a crop that is not a crop, overlapping DDP shards (ranks training on the same images), or
a resumed epoch that replays or skips batches. The torchvision path exists to be compared with
it, so both must produce the same tensors. Tests run on small CPU tensors whose labels are the
sample indices (0..N-1), so every served label says which image it is.
"""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader

from hpcsweep.data.loader import PAD, DeviceLoader, TorchvisionSplit, load_split, load_stats

COUNT = 103  # prime: no batch size or world size divides it, so every remainder path runs
BATCH = 16
MEAN = [0.49, 0.48, 0.45]
STD = [0.25, 0.24, 0.26]
# float32 rounding of values up to ~4: the loader and a float64 reference differ by a few 1e-7
TOLERANCE = 1e-6


IMAGES = torch.randint(0, 256, (COUNT, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
INDICES = torch.arange(COUNT)  # used as labels: a served label names its source image


def make_loader(**options) -> DeviceLoader:
    settings = dict(batch_size=BATCH, train=True, seed=0) | options
    return DeviceLoader(IMAGES, INDICES, MEAN, STD, **settings)


def served_labels(batches) -> list[int]:
    return torch.cat([labels for _, labels in batches]).tolist()


def assert_same_batches(first, second) -> None:
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)


def reference_normalised(images: torch.Tensor) -> torch.Tensor:
    """(uint8 / 255 - mean) / std, in float64 so the only error left is the loader's."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (images.double() / 255 - mean) / std


def to_pixels(normalised: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Undo the normalisation; refuses outputs that were not normalised uint8 pixels."""
    mean = torch.tensor(mean, dtype=torch.float64).view(-1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(-1, 3, 1, 1)
    pixels = (normalised.double() * std + mean) * 255
    assert (pixels - pixels.round()).abs().max() < 1e-3
    return pixels.round().to(torch.int16)


def crop_positions(pixels: torch.Tensor, original: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which `pixels` is that window of the 4-px zero-padded original."""
    padded = torch.nn.functional.pad(original.to(torch.int16), (PAD, PAD, PAD, PAD))
    windows = padded.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)  # 9 x 9 x 3 x 32 x 32
    positions = []
    for flipped in (False, True):
        candidate = pixels.flip(-1) if flipped else pixels
        hits = (windows == candidate).flatten(2).all(-1).nonzero().tolist()
        positions += [(dy, dx, flipped) for dy, dx in hits]
    return positions


def single_position(pixels: torch.Tensor, original: torch.Tensor) -> tuple[int, int, bool]:
    positions = crop_positions(pixels, original)
    assert len(positions) == 1, f"expected one matching window, found {positions}"
    return positions[0]


# --- order ---------------------------------------------------------------------------------


def test_same_seed_serves_identical_batches():
    assert_same_batches(list(make_loader(seed=7)), list(make_loader(seed=7)))


def test_a_different_seed_serves_a_different_order():
    assert served_labels(list(make_loader(seed=7))) != served_labels(list(make_loader(seed=8)))


def test_each_epoch_is_a_new_order_of_the_same_samples():
    loader = make_loader()
    first, second = served_labels(list(loader)), served_labels(list(loader))
    assert first != second
    # the same drop rule, so both epochs hold full batches of distinct samples
    assert len(set(first)) == len(first) == len(set(second)) == COUNT // BATCH * BATCH


# --- augmentation and normalisation --------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_batches_are_float_channels_last_images_with_int64_labels(train):
    images, labels = next(iter(make_loader(train=train)))
    assert images.dtype == torch.float32 and images.shape == (BATCH, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (BATCH,)


def test_eval_batches_are_the_normalised_images_in_order():
    batches = list(make_loader(train=False))
    assert served_labels(batches) == INDICES.tolist()
    images = torch.cat([images for images, _ in batches])
    torch.testing.assert_close(images.double(), reference_normalised(IMAGES), rtol=0, atol=TOLERANCE)


def test_train_images_are_flipped_or_plain_windows_of_the_padded_original():
    images, labels = next(iter(make_loader(batch_size=64)))
    pixels = to_pixels(images)
    positions = [single_position(pixels[i], IMAGES[label]) for i, label in enumerate(labels.tolist())]
    assert {flipped for _, _, flipped in positions} == {False, True}
    # 64 draws from 81 offsets: about 44 distinct are expected, a stuck offset gives 1
    assert len({(dy, dx) for dy, dx, _ in positions}) >= 10


# --- DDP shards ----------------------------------------------------------------------------


def rank_shards(world_size: int, train: bool) -> list[list[int]]:
    """The samples each rank serves in one epoch (batches of 1: no partial batch is dropped)."""
    return [
        served_labels(list(make_loader(batch_size=1, train=train, rank=rank, world_size=world_size)))
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("world_size", [2, 3])
def test_train_shards_are_disjoint_equal_and_drop_fewer_than_world_size(world_size):
    shards = rank_shards(world_size, train=True)
    assert len({len(shard) for shard in shards}) == 1  # ranks step in lockstep
    for shard in shards:
        assert len(set(shard)) == len(shard)
    union = [sample for shard in shards for sample in shard]
    assert len(set(union)) == len(union)  # no sample on two ranks
    assert COUNT - world_size < len(union) <= COUNT


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_cover_every_sample_exactly_once(world_size):
    union = [sample for shard in rank_shards(world_size, train=False) for sample in shard]
    assert sorted(union) == INDICES.tolist()


# --- length ----------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_len_is_the_number_of_batches_served(train, world_size):
    for rank in range(world_size):
        loader = make_loader(train=train, rank=rank, world_size=world_size)
        sizes = [len(labels) for _, labels in loader]
        assert len(loader) == len(sizes)
        if train:  # a partial batch would change the step's effective batch size
            assert set(sizes) == {BATCH}
        else:  # evaluation must see every sample of the shard
            assert sum(sizes) == len(range(rank, COUNT, world_size))


# --- resume ----------------------------------------------------------------------------------


def test_a_resumed_epoch_serves_exactly_the_remaining_batches_then_the_next_epoch():
    unbroken = make_loader()
    first_epoch, second_epoch = list(unbroken), list(unbroken)
    interrupted = make_loader()
    list(islice(iter(interrupted), 2))
    resumed = make_loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert_same_batches(list(resumed), first_epoch[2:])
    assert_same_batches(list(resumed), second_epoch)


# --- torchvision path ------------------------------------------------------------------------


def torchvision_batch(prepared, train: bool, count: int):
    images, labels = load_split(prepared, "train")
    split = TorchvisionSplit(images, labels, *load_stats(prepared), train=train)
    return next(iter(DataLoader(split, batch_size=count)))


def test_torchvision_eval_batches_match_the_device_loader(prepared):
    images, labels = load_split(prepared, "train")
    device = DeviceLoader(images, labels, *load_stats(prepared), batch_size=64, train=False, seed=0)
    device_images, device_labels = next(iter(device))
    torchvision_images, torchvision_labels = torchvision_batch(prepared, train=False, count=64)
    assert torchvision_images.dtype == torch.float32 and torchvision_images.shape == device_images.shape
    assert torchvision_labels.dtype == torch.int64 and torch.equal(torchvision_labels, device_labels)
    torch.testing.assert_close(torchvision_images, device_images, rtol=0, atol=TOLERANCE)


def test_torchvision_train_images_are_windows_of_the_padded_original(prepared):
    originals = load_split(prepared, "train")[0][:8]
    images, labels = torchvision_batch(prepared, train=True, count=8)
    assert images.dtype == torch.float32 and images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    pixels = to_pixels(images, *load_stats(prepared))
    for picture, original in zip(pixels, originals):
        single_position(picture, original)

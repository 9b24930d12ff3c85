"""Is feeding still a cost? Loader throughput against training throughput, and Lightning's overhead.

The device-resident loader exists so that loading never limits training, and training goes
through Lightning for checkpoints, DDP and logging, which must not cost speed. This script puts
numbers on both claims, on the machine it runs on, in one process, on the CPU:

  (a) the device-resident loader alone (train=True, batch 512), full epochs of the train split;
  (b) the torchvision DataLoader path (per-image transforms, batch 512, 2 workers), the same;
  (c) a one-epoch training of resnet20 through `hpcsweep.training.train.train` (Lightning), batch 128,
      read from the `train/images_per_s` metric it logs to MLflow (training steps only, no
      validation, no checkpointing);
  (d) a plain PyTorch loop (no Trainer) over the same model, loader, optimizer and schedule, on
      the same samples: one forward, backward and optimizer step per batch.

Every figure is the median of several repeats; (c) and (d) follow one untimed warm-up epoch and
alternate, so that drift in the machine's load hits both alike. Goals: (a) >= 20 x (c), and
(c) >= 0.95 x (d).

    .venv/bin/python benchmarks/loader_vs_training.py --prepared data/prepared --train-samples 2048

Not a test: run it by hand on an otherwise idle machine (it prints the load average) and copy
the figures into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F

from hpcsweep.config import Config, load_config
from hpcsweep.data.loader import CIFAR10DataModule, DeviceLoader, load_split, load_stats
from hpcsweep.training.module import ResNetModule
from hpcsweep.training.schedules import build_scheduler
from hpcsweep.training.train import train

ROOT = Path(__file__).resolve().parents[1]
LOADER_BATCH = 512
TRAIN_BATCH = 128
WORKERS = 2  # the development machine's cores; the data module's default
LOADER_GOAL = 20.0  # loader alone at least 20x faster than training
LIGHTNING_GOAL = 0.95  # Lightning within 5% of the plain loop


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prepared",
        type=Path,
        default=Path("data/prepared"),
        help="a prepared folder (train.pt, test.pt, stats.json); default data/prepared",
    )
    parser.add_argument(
        "--train-samples",
        type=int,
        default=2048,
        help="training samples per timed training epoch, (c) and (d); default 2048",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="the params file the training config starts from; default the project's",
    )
    parser.add_argument("--loader-repeats", type=int, default=5, help="epochs timed for (a) and (b)")
    parser.add_argument("--train-repeats", type=int, default=3, help="trainings timed for (c) and (d)")
    return parser.parse_args()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def images_per_s_of_epochs(loader: Iterable, repeats: int) -> list[float]:
    """Throughput of `repeats` consecutive full epochs; the first carries any start-up cost."""
    figures = []
    for _ in range(repeats):
        started, images = time.perf_counter(), 0
        for _, labels in loader:
            images += len(labels)
        figures.append(images / (time.perf_counter() - started))
    return figures


def device_loader(prepared: Path, limit: int | None, batch_size: int, seed: int) -> DeviceLoader:
    images, labels = load_split(prepared, "train", limit)
    return DeviceLoader(images, labels, *load_stats(prepared), batch_size=batch_size, train=True, seed=seed)


def torchvision_loader(prepared: Path, batch_size: int) -> Iterable:
    """The data module's own torchvision path, so the benchmark measures what training would use."""
    datamodule = CIFAR10DataModule(str(prepared), loader="torchvision", batch_size=batch_size, seed=0, workers=WORKERS)
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def training_config(args: argparse.Namespace, workdir: Path, repeat: int) -> Config:
    """One CPU epoch of resnet20 with SGD; a fresh checkpoint folder, or train() would resume."""
    overrides = [
        f"data.prepared_dir={args.prepared.resolve()}",
        "data.loader=device",
        "model=resnet20",
        "optimizer=sgd",
        "momentum=0.9",
        "nesterov=false",
        f"batch_size={TRAIN_BATCH}",
        f"micro_batch_size={TRAIN_BATCH}",
        f"limit_train_samples={args.train_samples}",
        "max_epochs=1",
        "warmup_epochs=0",
        "accelerator=cpu",
        "devices=1",
        "num_nodes=1",
        "strategy=auto",
        "precision=32-true",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        f"tracking.checkpoint_dir={workdir / f'run-{repeat}'}",
        "tracking.experiment=loader-vs-training",
        "tracking.system_metrics=false",
    ]
    return load_config(args.params, overrides)


def lightning_images_per_s(config: Config) -> float:
    result = train(config)
    metrics = mlflow.get_run(result.run_id).data.metrics
    if "train/images_per_s" not in metrics:
        raise SystemExit(f"run {result.run_id} logged no train/images_per_s; metrics: {sorted(metrics)}")
    return metrics["train/images_per_s"]


def plain_images_per_s(config: Config) -> float:
    """What `ResNetModule` and Lightning do per step, written out, timed like the efficiency callback."""
    settings = config.train
    torch.manual_seed(settings.seed)
    # the module only as a container: its channels_last model and its optimizer recipe, no Trainer
    module = ResNetModule.from_config(settings)
    model, optimizer = module.model, module.make_optimizer(module.model)
    loader = device_loader(Path(config.data.prepared_dir), settings.limit_train_samples, TRAIN_BATCH, settings.seed)
    scheduler = build_scheduler(optimizer, settings.scheduler, len(loader), 0)
    model.train()
    started, images = time.perf_counter(), 0
    for batch_images, labels in loader:
        loss = F.cross_entropy(model(batch_images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        images += len(labels)
    return images / (time.perf_counter() - started)


def alternate(measures: dict[str, Callable[[int], float]], repeats: int) -> dict[str, list[float]]:
    """Run the measures in turn, `repeats` rounds, so a change in load falls on all of them."""
    figures: dict[str, list[float]] = {name: [] for name in measures}
    for repeat in range(repeats):
        for name, measure in measures.items():
            figures[name].append(measure(repeat))
    return figures


def report(label: str, figures: list[float]) -> float:
    """Print the median and the runs; the load average (this process's own threads included)
    shows whether other work shared the CPUs meanwhile."""
    median = statistics.median(figures)
    print(
        f"{label:<58} median {median:>8,.0f} images/s   runs: {', '.join(f'{f:,.0f}' for f in figures)}"
        f"   (load {os.getloadavg()[0]:.1f})"
    )
    return median


def verdict(label: str, ratio: float, goal: float) -> None:
    print(f"{label:<58} {ratio:>10.3g}   goal >= {goal:g}: {'met' if ratio >= goal else 'NOT met'}")


def measure_loaders(args: argparse.Namespace, train_images: int) -> tuple[float, float]:
    """Medians of (a) and (b)."""
    # a small synthetic split has no full batch of 512, and train loaders drop partial batches
    batch = min(LOADER_BATCH, train_images)
    device = report(
        f"(a) device loader, batch {batch}, CPU",
        images_per_s_of_epochs(device_loader(args.prepared, None, batch, 0), args.loader_repeats),
    )
    torchvision = report(
        f"(b) torchvision DataLoader, batch {batch}, {WORKERS} workers",
        images_per_s_of_epochs(torchvision_loader(args.prepared, batch), args.loader_repeats),
    )
    return device, torchvision


def measure_training(args: argparse.Namespace) -> tuple[float, float]:
    """Medians of (c) and (d)."""
    with tempfile.TemporaryDirectory(prefix="loader-vs-training-") as workdir:

        def config(repeat: int) -> Config:
            return training_config(args, Path(workdir), repeat)

        # the first training in a process pays for kernel selection and allocator growth: untimed
        plain_images_per_s(config(-1))
        figures = alternate(
            {
                "lightning": lambda repeat: lightning_images_per_s(config(repeat)),
                "plain": lambda repeat: plain_images_per_s(config(repeat)),
            },
            args.train_repeats,
        )
    return (
        report(f"(c) train() with Lightning, resnet20, batch {TRAIN_BATCH}", figures["lightning"]),
        report(f"(d) plain PyTorch loop, resnet20, batch {TRAIN_BATCH}", figures["plain"]),
    )


def main() -> None:
    args = parse_args()
    # Lightning's per-fit banner and MLflow's migrations would bury the figures; a level set on
    # their loggers does not hold (pytorch_lightning resets its own to INFO when first imported)
    logging.disable(logging.INFO)
    train_images = len(load_split(args.prepared, "train")[1])
    print(
        f"date {datetime.datetime.now().isoformat(timespec='minutes')}, {os.cpu_count()} cores, {cpu_model()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"data {args.prepared.resolve()}: {train_images} train images; training on "
        f"{min(args.train_samples, train_images)} of them"
    )
    if os.getloadavg()[0] > 0.5:
        # oversubscribed cores slow the 2-thread training steps far more than their share
        print("WARNING: the CPUs are busy before the benchmark starts; the figures will be low and noisy")
    print()
    loader_alone, torchvision = measure_loaders(args, train_images)
    lightning, plain = measure_training(args)
    print()
    verdict("loader alone / training (a / c)", loader_alone / lightning, LOADER_GOAL)
    print(f"{'device loader / torchvision loader (a / b)':<58} {loader_alone / torchvision:>10.3g}")
    verdict("Lightning / plain loop (c / d)", lightning / plain, LIGHTNING_GOAL)


if __name__ == "__main__":
    main()

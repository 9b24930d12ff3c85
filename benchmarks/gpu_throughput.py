"""How fast hpcsweep trains on a GPU: against a plain PyTorch loop, in MFU, and resnet9 to 94%.

The study's answers are only as cheap as the tool that produces them, so this measures, on the
GPU it runs on:

  1. images/s of `hpcsweep train` (Lightning, the micro-batch plan, autologging into MLflow) for
     resnet20 and resnet18 in bf16-mixed (16-mixed before Ampere, as `precision: auto` picks), as
     the run logs it (train/images_per_s), against a plain PyTorch loop: the same model
     (build_model, channels_last), batch, precision (torch.autocast, a GradScaler for fp16),
     cuDNN autotuning, SGD, and the same data (the prepared split on the GPU, served by the same
     DeviceLoader), over the same steps after the same warm-up epoch. Goal for resnet18: the ratio
     hpcsweep / plain >= 0.97.
  2. MFU: the run's train/mfu where hpcsweep knows the GPU's peak; the plain loop's follows from
     the same FLOPs per image (same model, same device), so it scales with its images/s.
  3. resnet9 with the fast recipe, through the full stack (`hpcsweep grid
     slurm/grids/resnet9-fast.yaml --executor local`): time_to_target_s, the training time until
     the test accuracy first reached 94%. Goal on an H100: <= 15 s.

Results go to gpu-throughput.json and gpu-throughput.md in --out, rewritten after every figure, so
a run cut short keeps what it measured. benchmarks/gpu.sh runs this after the GPU tests:

    python benchmarks/gpu_throughput.py --prepared DIR --out DIR
    python benchmarks/gpu_throughput.py --prepared DIR --out DIR --device cpu --tiny   # the plumbing only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F
import yaml

from hpcsweep.atomic import atomic_file
from hpcsweep.data.loader import DeviceLoader, load_split, load_stats
from hpcsweep.grid.runs import grid_runs
from hpcsweep.hardware.precision import auto_precision
from hpcsweep.models import build_model
from hpcsweep.training.probe import autocast_for

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "slurm/grids/resnet9-fast.yaml"
MODELS = ("resnet20", "resnet18")
RATIO_GOAL = 0.97  # resnet18: hpcsweep train at least 97% of the plain loop's images/s
TIME_TO_TARGET_GOAL_S = 15.0  # resnet9 to 94% on an H100
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}  # params.yaml's sgd, for both sides


@dataclasses.dataclass(frozen=True)
class Settings:
    batch_size: int
    epochs: int  # the first warms up (cuDNN autotuning, allocator growth); the rest are timed
    limit_train_samples: int | None
    run_timeout_s: float  # one `hpcsweep train` or `hpcsweep grid` process
    resnet9_overrides: tuple[str, ...]  # on top of the grid file


FULL = Settings(batch_size=512, epochs=3, limit_train_samples=None, run_timeout_s=240, resnet9_overrides=())
# A CPU check of the plumbing on a small (synthetic) prepared folder: its figures mean nothing
TINY = Settings(
    batch_size=40,
    epochs=2,
    limit_train_samples=120,
    run_timeout_s=600,
    resnet9_overrides=(
        "accelerator=cpu",
        "max_epochs=1",
        "warmup_epochs=0",
        "batch_size=40",
        "base_batch_size=40",
        "micro_batch_size=40",
        "limit_train_samples=120",
        "target_accuracy=0.01",
    ),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="a prepared folder (hpcsweep prepare)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results", help="where the JSON and Markdown go")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a few steps of each, to check the plumbing (CPU)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params file runs start from")
    return parser.parse_args()


# --- the machine ----------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    figures = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device.type,
    }
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(device)
        figures["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        figures["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    else:
        figures["gpu"] = f"none (CPU: {platform.processor() or platform.machine()})"
    return figures


def precision_on(device: torch.device) -> str:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return auto_precision(device.type, capability)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- hpcsweep's side: real runs into a throwaway store --------------------------------------


@dataclasses.dataclass(frozen=True)
class Workspace:
    folder: Path
    params: Path
    prepared: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def overrides(self, name: str) -> list[str]:
        """Where every run reads and writes: the prepared data, this workspace's store and folders."""
        return [
            f"data.prepared_dir={self.prepared}",
            f"tracking.uri={self.tracking_uri}",
            f"tracking.checkpoint_dir={self.folder / 'checkpoints' / name}",
            "tracking.system_metrics=false",
        ]


def set_flags(assignments: list[str]) -> list[str]:
    return [arg for assignment in assignments for arg in ("-s", assignment)]


def hpcsweep(args: list[str], workspace: Workspace, timeout_s: float) -> None:
    """The CLI as a user runs it, in its own process; its output goes to this one's."""
    command = [sys.executable, "-m", "hpcsweep", *args]
    done = subprocess.run(command, cwd=workspace.folder, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} exited with {done.returncode}")


def metric_history(workspace: Workspace, run_id: str, key: str) -> list[float]:
    points = mlflow.MlflowClient(workspace.tracking_uri).get_metric_history(run_id, key)
    return [point.value for point in sorted(points, key=lambda point: point.step)]


def over_timed_epochs(per_epoch: list[float]) -> float | None:
    """A per-epoch rate over the epochs after the first: their harmonic mean, i.e. all their images
    over all their seconds (the epochs are equally long)."""
    timed = per_epoch[1:]
    return statistics.harmonic_mean(timed) if timed else None


def hpcsweep_train(model: str, precision: str, settings: Settings, workspace: Workspace, device) -> dict:
    """One `hpcsweep train` of `model`; its logged images/s and MFU over the timed epochs."""
    name = f"throughput-{model}"
    metrics_file = workspace.folder / f"{name}.json"
    assignments = [
        f"model={model}",
        "optimizer=sgd",
        f"lr={SGD['lr']}",
        f"momentum={SGD['momentum']}",
        f"weight_decay={SGD['weight_decay']}",
        "nesterov=false",
        "lr_scaling=none",
        f"batch_size={settings.batch_size}",
        f"base_batch_size={settings.batch_size}",
        f"micro_batch_size={settings.batch_size}",
        f"precision={precision}",
        f"accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"max_epochs={settings.epochs}",
        "warmup_epochs=0",
        f"limit_train_samples={settings.limit_train_samples or 'null'}",
        f"tracking.experiment={name}",
        *workspace.overrides(name),
    ]
    args = ["train", "--params", str(workspace.params), *set_flags(assignments), "--metrics-out", str(metrics_file)]
    hpcsweep(args, workspace, settings.run_timeout_s)
    run_id = json.loads(metrics_file.read_text())["run_id"]
    run = mlflow.MlflowClient(workspace.tracking_uri).get_run(run_id)
    images_per_s = metric_history(workspace, run_id, "train/images_per_s")
    mfu = metric_history(workspace, run_id, "train/mfu")
    return {
        "run_status": run.info.status,
        "precision_used": run.data.params.get("precision_used"),
        "images_per_s_per_epoch": images_per_s,
        "images_per_s": over_timed_epochs(images_per_s),
        "mfu": over_timed_epochs(mfu) if len(mfu) == len(images_per_s) else None,
        "model_gflops_per_image": run.data.metrics.get("model_gflops_per_image"),
        "peak_memory_mb": run.data.metrics.get("peak_memory_mb"),
    }


# --- the plain loop -------------------------------------------------------------------------


def plain_loop(model_name: str, precision: str, settings: Settings, prepared: Path, device) -> dict:
    """The same steps as `hpcsweep train`, written out: no Trainer, no tracking, no micro-batches."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = build_model(model_name).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    images, labels = load_split(prepared, "train", settings.limit_train_samples)
    loader = DeviceLoader(
        images.to(device), labels.to(device), *load_stats(prepared), batch_size=settings.batch_size, train=True, seed=0
    )

    def step(batch_images: torch.Tensor, batch_labels: torch.Tensor) -> None:
        with autocast_for(device, precision):
            loss = F.cross_entropy(model(batch_images), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for batch in loader:  # the warm-up epoch
        step(*batch)
    synchronize(device)
    started, served, steps = time.perf_counter(), 0, 0
    for _ in range(settings.epochs - 1):
        for batch in loader:
            step(*batch)
            served, steps = served + len(batch[1]), steps + 1
    synchronize(device)
    return {"images_per_s": served / (time.perf_counter() - started), "timed_steps": steps}


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compare(model: str, precision: str, settings: Settings, workspace: Workspace, device) -> dict:
    tracked = hpcsweep_train(model, precision, settings, workspace, device)
    plain = plain_loop(model, precision, settings, workspace.prepared, device)
    release(device)
    figures = {"precision": precision, "hpcsweep": tracked, "plain": plain}
    if tracked["images_per_s"]:
        figures["ratio"] = tracked["images_per_s"] / plain["images_per_s"]
        if tracked["mfu"] is not None:
            # same model on the same device: MFU is proportional to images/s
            plain["mfu"] = tracked["mfu"] * plain["images_per_s"] / tracked["images_per_s"]
    return figures


# --- resnet9 through the full stack ---------------------------------------------------------


def resnet9_to_target(settings: Settings, workspace: Workspace) -> dict:
    """The fast recipe as a grid of one point, run here by the local executor, read back from MLflow."""
    name = yaml.safe_load(GRID.read_text())["name"]
    assignments = [*workspace.overrides(name), *settings.resnet9_overrides]
    hpcsweep(
        ["grid", str(GRID), "--executor", "local", "--params", str(workspace.params), *set_flags(assignments)],
        workspace,
        settings.run_timeout_s,
    )
    [run] = grid_runs(mlflow.MlflowClient(workspace.tracking_uri), name)
    run_id, target = run.info.run_id, float(run.data.params["target_accuracy"])
    accuracy = metric_history(workspace, run_id, "val/acc")
    reached = next((epoch for epoch, value in enumerate(accuracy) if value >= target), None)
    return {
        "run_status": run.info.status,
        "precision_used": run.data.params.get("precision_used"),
        "target_accuracy": target,
        "time_to_target_s": run.data.metrics.get("time_to_target_s"),
        "epoch_reached": None if reached is None else reached + 1,
        "epochs": len(accuracy),
        "best_val_acc": max(accuracy, default=None),
        "total_time_s": run.data.metrics.get("total_time_s"),
        "images_per_s": over_timed_epochs(metric_history(workspace, run_id, "train/images_per_s")),
        "mfu": over_timed_epochs(metric_history(workspace, run_id, "train/mfu")),
    }


# --- results --------------------------------------------------------------------------------


def number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def verdict(value: float | None, goal: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= goal if at_least else value <= goal) else "NOT met"


def header(env: dict, settings: dict) -> list[str]:
    device = f"compute capability {env['capability']}, {env['gpu_memory_gb']} GB; " if "capability" in env else ""
    subset = f" of {settings['limit_train_samples']} images" if settings["limit_train_samples"] else ""
    return [
        f"# hpcsweep on {env['gpu']}",
        "",
        f"{env['date']}; {device}Python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}).",
        "",
        f"Batch {settings['batch_size']}, SGD; {settings['epochs'] - 1} timed epochs{subset} after one warm-up epoch.",
    ]


def throughput_table(throughput: dict) -> list[str]:
    lines = [
        "| model | precision | `hpcsweep train` images/s | plain loop images/s | ratio | MFU hpcsweep | MFU plain "
        "| peak memory MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, figures in throughput.items():
        tracked, plain = figures["hpcsweep"], figures["plain"]
        lines.append(
            f"| {model} | {figures['precision']} | {number(tracked['images_per_s'], ',.0f')} "
            f"| {number(plain['images_per_s'], ',.0f')} | {number(figures.get('ratio'), '.3f')} "
            f"| {number(tracked['mfu'], '.1%')} | {number(plain.get('mfu'), '.1%')} "
            f"| {number(tracked['peak_memory_mb'], ',.0f')} |"
        )
    ratio = throughput.get("resnet18", {}).get("ratio")
    return [*lines, "", f"resnet18 ratio goal >= {RATIO_GOAL}: **{verdict(ratio, RATIO_GOAL, at_least=True)}**"]


def resnet9_lines(fast: dict) -> list[str]:
    reached = verdict(fast["time_to_target_s"], TIME_TO_TARGET_GOAL_S, at_least=False)
    return [
        f"resnet9, `{GRID.relative_to(ROOT)}` through `hpcsweep grid --executor local`: test accuracy "
        f"{number(fast['target_accuracy'], '.0%')} after **{number(fast['time_to_target_s'], '.1f')} s** of training "
        f"(epoch {fast['epoch_reached']} of {fast['epochs']}; best {number(fast['best_val_acc'], '.4f')}; "
        f"{number(fast['images_per_s'], ',.0f')} images/s, MFU {number(fast['mfu'], '.1%')}; the whole fit "
        f"{number(fast['total_time_s'], '.1f')} s).",
        "",
        f"resnet9 goal <= {TIME_TO_TARGET_GOAL_S:g} s on an H100: **{reached}**",
    ]


def markdown(results: dict) -> str:
    lines = [*header(results["machine"], results["settings"]), "", *throughput_table(results["throughput"])]
    if "resnet9" in results:
        lines += ["", *resnet9_lines(results["resnet9"])]
    for part, error in results["errors"].items():
        lines += ["", f"**{part} failed**: {error}"]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "gpu-throughput.json") as temporary:
        temporary.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_file(out / "gpu-throughput.md") as temporary:
        temporary.write_text(markdown(results))


def measure(part: str, results: dict, out: Path, measurement: Callable[[], dict], store: Callable[[dict], None]):
    """Run one measurement; a failure is recorded and the others still run. Results are written after each."""
    print(f"--- {part}", flush=True)
    try:
        store(measurement())
    except Exception as error:  # a benchmark reports every part it could measure
        traceback.print_exc()
        results["errors"][part] = f"{type(error).__name__}: {error}"
    write(results, out)


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU: torch {torch.__version__} sees none", file=sys.stderr)
        return 1
    settings = TINY if args.tiny else FULL
    precision = precision_on(device)
    results = {
        "machine": machine(device),
        "settings": dataclasses.asdict(settings),
        "goals": {"resnet18_ratio_at_least": RATIO_GOAL, "resnet9_time_to_target_s_at_most": TIME_TO_TARGET_GOAL_S},
        "throughput": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as folder:
        workspace = Workspace(Path(folder), args.params.resolve(), args.prepared.resolve())
        for model in MODELS:
            measure(
                model,
                results,
                args.out,
                lambda: compare(model, precision, settings, workspace, device),
                lambda figures: results["throughput"].__setitem__(model, figures),
            )
        measure(
            "resnet9",
            results,
            args.out,
            lambda: resnet9_to_target(settings, workspace),
            lambda figures: results.__setitem__("resnet9", figures),
        )
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

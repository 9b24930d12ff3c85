"""`hpcsweep doctor`: what this machine offers a training, one line per fact, and what would fail it.

On a new cluster, or a node that behaves oddly, the questions are always the same: which torch,
CUDA, cuDNN and NCCL; which GPUs, and can this torch build run on them; is Slurm here; does the
tracking server answer; is the prepared data where the config says, prepared with its
data.val_size. Each answer is one line. Anything that would fail a training is a line
"problem: ..." with its fix, and the command exits 1. The checks are the ones the real steps
make: the hardware decision a job makes in its first seconds (gpus.py), the prepared-data checks
of every training (data/prepared.py) and the grid launcher's check that the tracking server
answers (tracking/client.py). Like a command, this module sits above the packages it asks; only
cli.py imports it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hpcsweep.config import Config
from hpcsweep.data.prepared import check_prepared
from hpcsweep.data.stats import check_val_size
from hpcsweep.errors import UserError
from hpcsweep.hardware.gpus import (
    Gpu,
    TorchBuild,
    arch_range,
    has_kernels,
    torch_build,
    training_problems,
    visible_gpus,
)
from hpcsweep.hardware.precision import precision_for

SBATCH_TIMEOUT_S = 10


@dataclass
class Diagnosis:
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each with its fix

    def add(self, fact: str, problem: str | None = None) -> None:
        self.facts.append(fact)
        if problem:
            self.problems.append(problem)

    def lines(self) -> list[str]:
        return [*self.facts, *(f"problem: {problem}" for problem in self.problems)]


def diagnose(config: Config) -> Diagnosis:
    build, gpus = torch_build(), visible_gpus()
    diagnosis = Diagnosis()
    for fact in (*build_facts(build), *(gpu_fact(index, gpu, build) for index, gpu in enumerate(gpus))):
        diagnosis.add(fact)
    if not gpus:
        diagnosis.add("GPU: no CUDA GPU visible")
    diagnosis.add(training_fact(config))
    diagnosis.problems += training_problems(config.train, build, gpus, range(config.train.devices))
    diagnosis.add(slurm_fact())
    diagnosis.add(*tracking_check(config))
    diagnosis.add(*prepared_check(Path(config.data.prepared_dir), config.data.val_size))
    return diagnosis


def build_facts(build: TorchBuild) -> list[str]:
    import torch

    return [
        f"torch: {build.version} (kernels for {arch_range(build.arch_list)})",
        f"CUDA: {build.cuda or 'none (CPU build)'}",
        f"cuDNN: {cudnn_version(torch.backends.cudnn.version())}",
        f"NCCL: {nccl_version()}",
    ]


def cudnn_version(number: int | None) -> str:
    """cuDNN's version number as major.minor.patch: 92400 is 9.24.0 (cuDNN 9), 8906 is 8.9.6 (cuDNN 8)."""
    if number is None:
        return "none"
    major_unit = 10000 if number >= 90000 else 1000
    return f"{number // major_unit}.{number % major_unit // 100}.{number % 100}"


def nccl_version() -> str:
    import torch

    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError):  # a build without NCCL (CPU-only, macOS, Windows)
        return "none in this build"


def gpu_fact(index: int, gpu: Gpu, build: TorchBuild) -> str:
    kernels = "kernels ok" if has_kernels(gpu.capability, build.arch_list) else "no kernels in this torch build"
    bf16 = "yes" if gpu.bf16 else "no"
    return f"GPU {index}: {gpu.name}, {gpu.sm}, {gpu.memory_mb} MB, bf16 {bf16}, {kernels}"


def training_fact(config: Config) -> str:
    train = config.train
    used = precision_for(train.accelerator, train.precision)
    precision = f"{train.precision} ({used} here)" if used != train.precision else train.precision
    return f"training: accelerator={train.accelerator}, precision={precision}, devices={train.devices}"


def slurm_fact() -> str:
    """Slurm is optional: without it only --executor slurm is unavailable, so nothing here is a problem."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return "slurm: not found: --executor slurm is unavailable here"
    try:
        done = subprocess.run([sbatch, "--version"], capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"slurm: {sbatch}, but `sbatch --version` did not answer in {SBATCH_TIMEOUT_S} s"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"slurm: {sbatch}, but `sbatch --version` failed: {said}"
    return f"slurm: {sbatch} ({done.stdout.strip()})"


def tracking_check(config: Config) -> tuple[str, str | None]:
    from hpcsweep.tracking.client import absolute_uri, check_tracking_server, is_server, tracking_uri
    from hpcsweep.tracking.credentials import redact

    uri = tracking_uri(config)
    if not is_server(uri):
        return f"tracking: local store {redact(absolute_uri(uri))}", None
    try:
        check_tracking_server(uri)
    except UserError as error:
        return f"tracking: server {redact(uri)} does not answer", str(error)
    return f"tracking: server {redact(uri)} answers", None


def prepared_check(prepared_dir: Path, val_size: int) -> tuple[str, str | None]:
    try:
        stats = check_prepared(prepared_dir)
        check_val_size(val_size, stats, prepared_dir)
    except UserError as error:
        return f"prepared data: {prepared_dir}: not usable", str(error)
    counts = ", ".join(f"{count} {split}" for split, count in stats["images"].items())
    return f"prepared data: {prepared_dir} ({counts} images)", None

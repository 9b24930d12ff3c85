"""The GPUs a training would run on, what this torch build can run on them, and the job-start check.

A torch build carries kernels for a list of GPU generations (`torch.cuda.get_arch_list()`); on any
other GPU the first CUDA kernel fails with "no kernel image is available", deep inside Lightning,
minutes into a job (a CUDA 12.8+ or 13 build on a Pascal P100 or a Volta V100). The same goes for
bf16 on a GPU older than Ampere, or more devices than the node shows. `check_training_hardware`
finds all of them in a job's first seconds, before an MLflow run is opened or changed.

Facts (torch calls: `visible_gpus`, `torch_build`) are gathered apart from the decisions
(`kernel_problem`, `training_problems`), which are pure and tested with the facts a P100, V100,
A100 and H100 give.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcsweep.errors import UserError
from hpcsweep.ranks import local_rank

if TYPE_CHECKING:
    from hpcsweep.config import TrainConfig

BF16_MIN_CAPABILITY = (8, 0)  # Ampere
ARCH_PATTERN = re.compile(r"(sm|compute)_(\d+)(\d)([a-z]?)")
# Where `make setup TORCH_INDEX=...` finds a build, with the kernels each build ships (PyTorch's
# release notes): CUDA 12.6 builds still have Maxwell to Hopper; 12.8+ and 13 builds dropped Pascal
# and Volta. The first that runs a GPU is the one suggested.
TORCH_INDEXES = {
    "https://download.pytorch.org/whl/cu126": ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    "https://download.pytorch.org/whl/cu130": ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
}
INSTALL_HELP = "README: GPU generations"
NOT_ON_GPU = "set accelerator=auto or cpu"


def supports_bf16(capability: tuple[int, int]) -> bool:
    return capability >= BF16_MIN_CAPABILITY


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]  # CUDA compute capability (major, minor)
    memory_mb: int

    @property
    def bf16(self) -> bool:
        return supports_bf16(self.capability)

    @property
    def sm(self) -> str:
        return "sm_{}{}".format(*self.capability)


@dataclass(frozen=True)
class TorchBuild:
    version: str
    cuda: str | None  # None: a CPU-only build
    arch_list: tuple[str, ...]


@dataclass(frozen=True)
class Arch:
    """One entry of a build's arch list: `sm_XY` is machine code, `compute_XY` PTX that the driver
    compiles for the GPU at hand; an `a` suffix (sm_90a) uses features of exactly that GPU, an `f`
    suffix (sm_100f) those of its family, which plain machine code runs on anyway."""

    name: str
    ptx: bool
    capability: tuple[int, int]
    exact: bool = False

    def runs_on(self, capability: tuple[int, int]) -> bool:
        if self.exact:
            return capability == self.capability
        if self.ptx:
            return capability >= self.capability
        # machine code runs on its own major version, on the same or a later minor one
        return capability[0] == self.capability[0] and capability[1] >= self.capability[1]


def parse_arch_list(entries: Iterable[str]) -> list[Arch]:
    """The entries of `torch.cuda.get_arch_list()` this module understands; others are left out."""
    archs = []
    for entry in entries:
        match = ARCH_PATTERN.fullmatch(entry)
        if match:
            kind, major, minor, suffix = match.groups()
            archs.append(Arch(entry, ptx=kind == "compute", capability=(int(major), int(minor)), exact=suffix == "a"))
    return archs


def has_kernels(capability: tuple[int, int], arch_list: Iterable[str]) -> bool:
    return any(arch.runs_on(capability) for arch in parse_arch_list(arch_list))


def arch_range(arch_list: Sequence[str]) -> str:
    """The oldest and newest machine code of a build, e.g. sm_75..sm_120 (its PTX when it has only that)."""
    archs = parse_arch_list(arch_list)
    shown = sorted([arch for arch in archs if not arch.ptx] or archs, key=lambda arch: arch.capability)
    if not shown:
        return "none"
    return shown[0].name if len(shown) == 1 else f"{shown[0].name}..{shown[-1].name}"


def install_hint(gpu: Gpu) -> str:
    for index, arch_list in TORCH_INDEXES.items():
        if has_kernels(gpu.capability, arch_list):
            return f"make setup TORCH_INDEX={index} ({INSTALL_HELP})"
    return f"see {INSTALL_HELP}"


def kernel_problem(gpu: Gpu, arch_list: Sequence[str], torch_version: str) -> str | None:
    """Why this torch build cannot run on `gpu`, with the build to install instead; None if it can."""
    if has_kernels(gpu.capability, arch_list):
        return None
    return (
        f"{gpu.name} is {gpu.sm}; this torch build ({torch_version}) has kernels for {arch_range(arch_list)}; "
        f"install a build with {gpu.sm} kernels: {install_hint(gpu)}"
    )


def precision_problem(gpu: Gpu, precision: str) -> str | None:
    if precision == "bf16-mixed" and not gpu.bf16:
        return f"precision=bf16-mixed but {gpu.name} ({gpu.sm}) has no bf16; set precision=auto or 16-mixed"
    return None


def no_gpu_problem(build: TorchBuild) -> str:
    if build.cuda is None:
        return (
            f"accelerator=gpu but this torch build ({build.version}) has no CUDA: install a CUDA build "
            f"({INSTALL_HELP}), or {NOT_ON_GPU}"
        )
    return (
        "accelerator=gpu but no CUDA GPU is visible: run on a GPU node (a SLURM job asks for GPUs when "
        f"accelerator=gpu), or {NOT_ON_GPU}"
    )


def gpu_of_rank(gpus: Sequence[Gpu], rank: int) -> Gpu:
    """The GPU the process of this local rank drives: all of a node's GPUs are visible to each of its
    processes, or (srun binding one GPU to each task) only its own."""
    return gpus[rank % len(gpus)]


def training_problems(
    train: TrainConfig, build: TorchBuild, gpus: Sequence[Gpu], local_ranks: Iterable[int]
) -> list[str]:
    """What would fail a training of `train` on these GPUs, for the processes of these local ranks;
    accelerator=auto without a GPU trains on the CPU."""
    if train.accelerator == "cpu":
        return []
    if not gpus:
        return [no_gpu_problem(build)] if train.accelerator == "gpu" else []
    problems = []
    if train.devices > len(gpus):
        problems.append(
            f"devices={train.devices} but only {len(gpus)} CUDA GPU(s) are visible here: set devices={len(gpus)} "
            f"or run where {train.devices} GPUs per node are visible"
        )
    for gpu in dict.fromkeys(gpu_of_rank(gpus, rank) for rank in local_ranks):
        problems += gpu_problems(gpu, train.precision, build)
    return problems


def gpu_problems(gpu: Gpu, precision: str, build: TorchBuild) -> list[str]:
    found = [kernel_problem(gpu, build.arch_list, build.version), precision_problem(gpu, precision)]
    return [problem for problem in found if problem]


def torch_build() -> TorchBuild:
    import torch

    return TorchBuild(version=torch.__version__, cuda=torch.version.cuda, arch_list=tuple(torch.cuda.get_arch_list()))


def trains_on_cuda(accelerator: str) -> bool:
    """Whether a training with this `accelerator` runs on CUDA here (auto and gpu, where one is visible)."""
    import torch

    return accelerator != "cpu" and torch.cuda.is_available()


def visible_gpus() -> list[Gpu]:
    """The CUDA GPUs this process sees (CUDA_VISIBLE_DEVICES applied), in device order."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(properties.name, (properties.major, properties.minor), properties.total_memory // 2**20))
    return gpus


def check_training_hardware(train: TrainConfig) -> None:
    """Raise one UserError line naming every hardware problem this process's training would meet."""
    problems = training_problems(train, torch_build(), visible_gpus(), [local_rank()])
    if problems:
        raise UserError("; ".join(problems))

"""The hardware decisions, fed the facts the GPUs of a study's clusters give.

A P100 (sm_60), a V100 (sm_70), an A100 (sm_80) and an H100 (sm_90) against the arch lists of a
CUDA 13 build (the pinned torch) and a CUDA 12.6 build (the one for Pascal and Volta): which runs,
what the message tells the user to install, and what `precision: auto` picks. The facts gathered
from torch itself are checked on this machine, which has no GPU.
"""

from __future__ import annotations

import pytest
import torch

from helpers.project import ROOT
from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.hardware.gpus import (
    Gpu,
    TorchBuild,
    check_training_hardware,
    has_kernels,
    kernel_problem,
    parse_arch_list,
    torch_build,
    training_problems,
    visible_gpus,
)
from hpcsweep.hardware.precision import auto_precision, precision_for

P100 = Gpu("Tesla P100-PCIE-16GB", (6, 0), 16280)
V100 = Gpu("Tesla V100-SXM2-32GB", (7, 0), 32494)
A100 = Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81050)
H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0), 81559)
CU130 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
CU126 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CU130_BUILD = TorchBuild("2.14.1+cu130", "13.0", CU130)
CU126_BUILD = TorchBuild("2.8.0+cu126", "12.6", CU126)
CPU_BUILD = TorchBuild("2.14.1+cpu", None, ())
ON_A_CPU_MACHINE = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU gets")


def train(*assignments: str):
    return load_config(ROOT / "params.yaml", assignments).train


@pytest.mark.parametrize(
    ("gpu", "arch_list", "runs"),
    [
        (P100, CU130, False),
        (V100, CU130, False),
        (A100, CU130, True),
        (H100, CU130, True),
        (P100, CU126, True),
        (V100, CU126, True),
        (A100, CU126, True),
        (H100, CU126, True),
    ],
    ids=lambda value: value.name if isinstance(value, Gpu) else None,
)
def test_which_gpus_each_build_runs_on(gpu, arch_list, runs):
    problem = kernel_problem(gpu, arch_list, "some-version")
    assert (problem is None) == runs, problem


def test_the_p100_message_says_what_it_is_what_the_build_has_and_what_to_install():
    assert kernel_problem(P100, CU130, "2.14.1+cu130") == (
        "Tesla P100-PCIE-16GB is sm_60; this torch build (2.14.1+cu130) has kernels for sm_75..sm_120; "
        "install a build with sm_60 kernels: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126 "
        "(README: GPU generations)"
    )


def test_the_v100_is_sent_to_the_same_cuda_12_6_build():
    problem = kernel_problem(V100, CU130, "2.14.1+cu130")
    assert problem.startswith("Tesla V100-SXM2-32GB is sm_70;")
    assert (
        "install a build with sm_70 kernels: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126" in problem
    )


def test_a_gpu_no_known_build_runs_is_sent_to_the_readme():
    problem = kernel_problem(Gpu("Tesla K80", (3, 7), 11441), CU130, "2.14.1+cu130")
    assert problem.endswith("install a build with sm_37 kernels: see README: GPU generations")


@pytest.mark.parametrize(
    ("capability", "arch_list", "runs"),
    [
        ((8, 6), ["sm_80"], True),  # machine code runs on a later minor version of its major
        ((8, 0), ["sm_86"], False),  # not on an earlier one
        ((9, 0), ["sm_80", "sm_86"], False),  # nor on another major
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX is compiled by the driver for newer GPUs
        ((8, 6), ["compute_90"], False),  # but not for older ones
        ((9, 0), ["sm_90a"], True),  # arch-specific code: that GPU only
        ((10, 0), ["sm_90a", "compute_90a"], False),
        ((10, 3), ["sm_100a"], False),
        ((10, 3), ["sm_100f"], True),  # family code: its major version, as plain machine code
        ((9, 0), ["sm_80", "bogus", ""], False),  # entries it does not understand are left out
    ],
)
def test_binary_compatibility_within_a_major_version_and_ptx_forward(capability, arch_list, runs):
    assert has_kernels(capability, arch_list) == runs


def test_a_build_with_ptx_only_names_its_ptx():
    assert "has kernels for compute_80;" in kernel_problem(P100, ["compute_80"], "x")


def test_bf16_from_ampere_on():
    assert [gpu.bf16 for gpu in (P100, V100, A100, H100)] == [False, False, True, True]
    assert [gpu.sm for gpu in (P100, V100, A100, H100)] == ["sm_60", "sm_70", "sm_80", "sm_90"]


def test_precision_auto_is_bf16_on_ampere_and_newer_fp16_before_and_fp32_on_the_cpu():
    assert [auto_precision("cuda", gpu.capability) for gpu in (P100, V100, A100, H100)] == [
        "16-mixed",
        "16-mixed",
        "bf16-mixed",
        "bf16-mixed",
    ]
    assert auto_precision("cpu", None) == "32-true"


def test_precision_for_keeps_an_explicit_choice_and_means_fp32_on_the_cpu():
    assert precision_for("cpu", "auto") == "32-true"
    assert precision_for("gpu", "16-mixed") == "16-mixed"


def test_a_p100_with_a_cuda_13_build_fails_with_every_problem_in_one_list():
    problems = training_problems(
        train("accelerator=gpu", "precision=bf16-mixed", "devices=2", "strategy=ddp"), CU130_BUILD, [P100], [0, 1]
    )
    assert len(problems) == 3, problems
    assert problems[0].startswith("devices=2 but only 1 CUDA GPU(s) are visible here: set devices=1")
    assert problems[1].startswith("Tesla P100-PCIE-16GB is sm_60; this torch build (2.14.1+cu130)")
    assert problems[2] == (
        "precision=bf16-mixed but Tesla P100-PCIE-16GB (sm_60) has no bf16; set precision=auto or 16-mixed"
    )


@pytest.mark.parametrize("precision", ["auto", "16-mixed", "32-true"])
def test_a_p100_with_the_cuda_12_6_build_trains(precision):
    assert training_problems(train("accelerator=gpu", f"precision={precision}"), CU126_BUILD, [P100], [0]) == []


def test_an_h100_trains_in_bf16_with_either_build():
    for build in (CU130_BUILD, CU126_BUILD):
        assert training_problems(train("accelerator=gpu", "precision=bf16-mixed"), build, [H100], [0]) == []


def test_accelerator_auto_uses_the_gpu_so_it_is_checked():
    [problem] = training_problems(train("accelerator=auto"), CU130_BUILD, [V100], [0])
    assert problem.startswith("Tesla V100-SXM2-32GB is sm_70")


def test_accelerator_cpu_never_touches_the_gpu():
    assert training_problems(train("accelerator=cpu", "precision=bf16-mixed"), CU130_BUILD, [P100], [0]) == []


def test_without_a_gpu_auto_trains_on_the_cpu_and_gpu_is_refused():
    assert training_problems(train("accelerator=auto", "devices=2", "strategy=ddp"), CU130_BUILD, [], [0]) == []
    [problem] = training_problems(train("accelerator=gpu"), CU130_BUILD, [], [0])
    assert problem.startswith("accelerator=gpu but no CUDA GPU is visible: run on a GPU node")
    assert problem.endswith("or set accelerator=auto or cpu")


def test_a_cpu_only_build_is_named_as_the_reason():
    [problem] = training_problems(train("accelerator=gpu"), CPU_BUILD, [], [0])
    assert problem.startswith("accelerator=gpu but this torch build (2.14.1+cpu) has no CUDA: install a CUDA build")


def test_each_rank_is_checked_on_the_gpu_it_drives():
    mixed = [H100, P100]
    gpu_training = train("accelerator=gpu")
    assert training_problems(gpu_training, CU130_BUILD, mixed, [0]) == []
    assert "Tesla P100" in training_problems(gpu_training, CU130_BUILD, mixed, [1])[0]
    assert "Tesla P100" in training_problems(gpu_training, CU130_BUILD, mixed, [3])[0]  # local rank modulo visible GPUs
    # srun binding one GPU to each task: every rank sees its own GPU as device 0
    assert "Tesla P100" in training_problems(gpu_training, CU130_BUILD, [P100], [5])[0]


def test_the_same_problem_on_several_gpus_is_said_once():
    problems = training_problems(
        train("accelerator=gpu", "devices=2", "strategy=ddp"), CU130_BUILD, [P100, P100], [0, 1]
    )
    assert len(problems) == 1, problems


def test_every_entry_of_the_installed_builds_arch_list_is_understood():
    build = torch_build()
    assert (build.version, build.cuda) == (torch.__version__, torch.version.cuda) and build.arch_list
    assert len(parse_arch_list(build.arch_list)) == len(build.arch_list), build.arch_list


@ON_A_CPU_MACHINE
def test_the_job_start_check_here_refuses_a_gpu_training_in_one_line_and_passes_a_cpu_one():
    assert visible_gpus() == []
    with pytest.raises(UserError) as error:
        check_training_hardware(train("accelerator=gpu", "precision=bf16-mixed"))
    assert str(error.value).startswith("accelerator=gpu but no CUDA GPU is visible") and "\n" not in str(error.value)
    check_training_hardware(train("accelerator=auto"))
    check_training_hardware(train("accelerator=cpu", "precision=bf16-mixed"))

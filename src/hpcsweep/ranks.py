"""Which process of a distributed training this is, from what its launcher put in the environment.

torchrun and Lightning set RANK and LOCAL_RANK, srun sets SLURM_PROCID and SLURM_LOCALID. Only
global rank 0 talks to MLflow; the first process of each node reports that node's system metrics.
SLURM also says which job the process belongs to; a requeued job keeps its name.
"""

from __future__ import annotations

import os


def global_rank() -> int:
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable])
    return int(os.environ.get("LOCAL_RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def slurm_job() -> str | None:
    """The SLURM job this process runs in, as squeue and scontrol name it (ARRAYJOB_TASK for an array
    task), or None outside SLURM."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")

"""Which process of a distributed training this is, from what its launcher put in the environment.

torchrun and Lightning set RANK and LOCAL_RANK, srun sets SLURM_PROCID and SLURM_LOCALID. Only
global rank 0 talks to MLflow; the first process of each node reports that node's system metrics.
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

"""Where grid points run: here, one after another (local), or as SLURM job arrays (slurm).

`--executor NAME` picks a class from EXECUTORS; both implement `base.Executor`.
"""

from hpcsweep.grid.executors.base import Executor
from hpcsweep.grid.executors.local import LocalExecutor
from hpcsweep.grid.executors.slurm import SlurmExecutor

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "slurm": SlurmExecutor}

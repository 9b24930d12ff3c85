"""Run grid points on this machine, one after another: the laptop's executor.

Each point runs as its own process (`hpcsweep run-point`), exactly as a SLURM task would, so a
DDP point can spawn its ranks and a crash of one point cannot take the others down. Ctrl-C stops
the point that is running (its run becomes KILLED) and leaves the points not yet started as they
are, SCHEDULED, for the next launch to pick up.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hpcsweep.grid.executors.base import Batch, BatchRuns, Executor


class LocalExecutor(Executor):
    """A batch is its points run here in turn; nothing to check, write or test beforehand."""

    def submit(self, batch: Batch, runs: BatchRuns) -> None:
        run_points(batch.points_file, len(batch.points), on_interrupt=runs.mark_killed)

    def live_jobs(self, job_keys: list[str]) -> set[str]:
        return set()  # points run in the foreground: nothing of an earlier launch is still going


def run_points(points_file: Path, count: int, on_interrupt: Callable[[int], None]) -> list[int]:
    """Run every point of `points_file`; returns their exit codes. Ctrl-C calls on_interrupt(index)."""
    codes = []
    for index in range(count):
        process = subprocess.Popen([sys.executable, "-m", "hpcsweep", "run-point", str(points_file), str(index)])
        try:
            codes.append(process.wait())
        except KeyboardInterrupt:
            process.wait()  # the same terminal sent it SIGINT too: let it shut down and mark its run
            on_interrupt(index)
            raise
    return codes

"""Run grid points on this machine, one after another: the laptop's executor.

Each point runs as its own process (`hpcsweep run-point`), exactly as a SLURM task would, so a
DDP point can spawn its ranks and a crash of one point cannot take the others down. Ctrl-C stops
the point that is running (its run becomes KILLED) and leaves the points not yet started as they
are, SCHEDULED, for the next launch to pick up. Each point is announced (`point 2/6: optimizer=adam`)
and followed by its outcome, its time and how long the rest should take, so that a long local grid
says where it is.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpcsweep.durations import short_duration, time_left
from hpcsweep.grid.executors.base import Batch, BatchRuns, Executor


class LocalExecutor(Executor):
    """A batch is its points run here in turn; nothing to check, write or test beforehand."""

    runs_in_foreground = True

    def submit(self, batch: Batch, runs: BatchRuns) -> None:
        run_points(batch.points_file, [point.label for point in batch.points], on_interrupt=runs.mark_killed)

    def live_jobs(self, job_keys: list[str]) -> set[str]:
        return set()  # points run in the foreground: nothing of an earlier launch is still going


def run_points(points_file: Path, labels: list[str], on_interrupt: Callable[[int], None]) -> list[int]:
    """Run every point of `points_file` (named by `labels`, as `status` names them), each between a
    header and its outcome line; returns their exit codes. Ctrl-C calls on_interrupt(index)."""
    codes: list[int] = []
    durations: list[float] = []
    for index, label in enumerate(labels):
        # flushed: the point's own process writes into the same stdout next
        print(f"point {index + 1}/{len(labels)}: {label}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "hpcsweep", "run-point", str(points_file), str(index)])
        try:
            codes.append(process.wait())
        except KeyboardInterrupt:
            process.wait()  # the same terminal sent it SIGINT too: let it shut down and mark its run
            on_interrupt(index)
            raise
        durations.append(time.monotonic() - started)
        print(outcome_line(index, len(labels), codes[-1], durations), flush=True)
    return codes


def outcome_line(index: int, count: int, code: int, durations: list[float]) -> str:
    """`point 2/6 done in 1m52s (exit 0); about 7m30s left`: the time left from the mean point so far."""
    ended = "done" if code == 0 else "failed"
    how = f"signal {-code}" if code < 0 else f"exit {code}"
    line = f"point {index + 1}/{count} {ended} in {short_duration(durations[-1])} ({how})"
    remaining = count - index - 1
    return f"{line}; about {short_duration(time_left(durations, remaining))} left" if remaining else line

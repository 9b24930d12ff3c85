"""The one interface local and SLURM execution share, so `launch` never asks which one it holds.

As in submitit, every executor answers the same steps, called by launch in the same order: check,
check points and the largest batch it takes (before anything is created), prepare (write what a
batch needs), test (would the scheduler take it; still before any run exists), submit, and live
jobs (for a relaunch).
Another scheduler is one more class, not another branch in launch. Executors know their scheduler and nothing of MLflow:
what happened to a batch's runs (a point stopped by Ctrl-C, a job id) they
report through `BatchRuns`, which launch implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcsweep.grid.spec import Point


@dataclass(frozen=True)
class ExecutorSettings:
    """What the `grid` command's flags say about running jobs; each executor reads what concerns it."""

    template: str | None = None  # a site's job-script template; None: the built-in one
    max_parallel: int | None = None  # at most this many tasks of a job array at once; None: the config's
    # names this process took from the secrets file: kept out of a job's environment, the job reads the file
    secrets_from_file: frozenset[str] = frozenset()


@dataclass
class Batch:
    """Points of one resource shape, run together (one SLURM job array), and the files that say so."""

    number: int
    grid_name: str
    points: list[Point]
    folder: Path  # the launch folder
    script: Path | None = None  # the job script, where the executor needs one

    @property
    def points_file(self) -> Path:
        return self.folder / f"points-{self.number}.json"


class BatchRuns(Protocol):
    """The MLflow runs of one batch's points, addressed by task: a point's place in the batch."""

    def mark_killed(self, task: int) -> None:
        """The point was stopped while running: its run becomes KILLED unless it already ended."""

    def queued(self, job_id: str, logs: list[Path]) -> None:
        """The batch was submitted as job array `job_id`: each point's run is created (unless its task
        already made it), tagged with its job, its task and the file its task logs to (`logs[task]`)."""


class Executor(ABC):
    """Where a launch's batches run. The default steps do nothing, for executors that need none."""

    runs_in_foreground = False  # True: submit runs the batch to its end, here; its runs must exist first

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        self.settings = settings or ExecutorSettings()

    def check(self) -> None:
        """Fail with one line, before anything is created, if batches cannot run from here."""

    def check_points(self, points: list[Point]) -> None:
        """Fail with one line naming the point, before anything is created, if a point cannot run here."""

    def max_batch_size(self) -> int | None:
        """The most points one batch may hold (a scheduler's largest job array); None: any number."""
        return None

    def prepare(self, batch: Batch) -> None:
        """Write what running the batch needs besides its points file (a job script)."""

    def test(self, batch: Batch) -> None:
        """Fail if the batch would be refused, before any of its runs is created."""

    @abstractmethod
    def submit(self, batch: Batch, runs: BatchRuns) -> None:
        """Run or submit the batch, telling `runs` what became of it."""

    @abstractmethod
    def live_jobs(self, job_keys: list[str]) -> set[str]:
        """Which of these jobs (ARRAYJOB_TASK keys from the runs' tags) are still queued or running."""

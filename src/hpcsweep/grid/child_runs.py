"""A launch's child runs, created from a thread pool while the jobs already wait in the queue.

Creating a run is three round trips to the tracking server (create, params, SCHEDULED): for 1000
points, most of a minute even from 16 threads. So a launch hands its job arrays to SLURM first and
creates each array's runs as soon as the array has its job id (which the runs are tagged with);
a task that starts before its run exists makes it itself, and `run_ids` sees to it that each point
gets one run either way. Points that run here in the foreground (the local executor) get theirs
before they start. This is also `BatchRuns`, what an executor reports about a batch.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import mlflow

from hpcsweep.grid import queued_tasks, run_ids, run_reading
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors.base import Batch
from hpcsweep.tracking.credentials import redact_text


class ChildRuns:
    """Creates child runs of one launch in the background, each unless its task claimed it first."""

    def __init__(self, client: mlflow.MlflowClient, lineage: grid_runs.Lineage) -> None:
        self.client = client
        self.lineage = lineage
        self.pool = ThreadPoolExecutor(grid_runs.CLIENT_THREADS, thread_name_prefix="child-runs")
        self.futures: list[Future] = []
        self.started = time.monotonic()

    def create(self, batch: Batch, tags: list[dict[str, str]]) -> None:
        """Start creating the batch's runs, SCHEDULED, task i's with `tags[i]`."""
        for task, point in enumerate(batch.points):

            def make(point=point, task=task) -> str:
                return grid_runs.create_child(
                    self.client, self.lineage, point.label, point.config, tags[task], scheduled=True
                )

            self.futures.append(self.pool.submit(run_ids.create_once, batch.points_file, task, make))

    def create_now(self, batches: list[Batch]) -> None:
        """Create the runs of points about to run in the foreground, and wait for them."""
        for batch in batches:
            self.create(batch, [{}] * len(batch.points))
        wait(self.futures)

    def batch_runs(self, batch: Batch) -> MlflowBatchRuns:
        return MlflowBatchRuns(self, batch)

    def close(self, cancel: bool) -> None:
        """Wait for the runs still being created (`cancel`: only for those already under way), and
        say how it went: runs its tasks made are fine, runs nobody made yet will be made by their tasks."""
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        done = [future for future in self.futures if future.done() and not future.cancelled()]
        failed = [future.exception() for future in done if future.exception() is not None]
        created = sum(1 for future in done if future.exception() is None and future.result())
        claimed = len(done) - len(failed) - created
        line = f"{self.lineage.grid}: {created} runs created in {time.monotonic() - self.started:.1f} s"
        if claimed:
            line += f", {claimed} by their tasks, which started first"
        print(line, flush=True)
        if failed:
            print(
                f"warning: {len(failed)} runs could not be created here ({redact_text(str(failed[0]))}); "
                f"each of their tasks creates its own when it starts",
                file=sys.stderr,
                flush=True,
            )


@dataclass(frozen=True)
class MlflowBatchRuns:
    """What an executor reports about a batch (`executors.base.BatchRuns`), done to its child runs."""

    runs: ChildRuns
    batch: Batch

    def queued(self, job_id: str, logs: list[Path]) -> None:
        queued_tasks.record(self.batch.points_file, job_id, logs)  # first: a relaunch finds the tasks by it
        tags = [grid_runs.job_tags(job_id, task, str(log)) for task, log in enumerate(logs)]
        self.runs.create(self.batch, tags)

    def mark_killed(self, task: int) -> None:
        run_id = run_ids.recorded(self.batch.points_file, task)
        client = self.runs.client
        if run_id and run_reading.is_active(client.get_run(run_id)):
            grid_runs.finish(client, run_id, "KILLED")

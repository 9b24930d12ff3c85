"""`hpcsweep status` and `hpcsweep cancel`: one row per point, SLURM's view beside MLflow's.

MLflow knows what training reported (status, last `val/acc`); SLURM knows what happened to the
job (pending, requeued, killed for memory or time, node failure), including deaths that left
the run RUNNING forever. Neither is enough alone, so a row shows both, and where a point did not
finish, the log its array task wrote: the first place to look. A point its grid's `prune:` stopped
early shows as PRUNED with the epoch it stopped after, and is counted as pruned, whatever SLURM
says of its job. `cancel` says what it will stop before it stops it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hpcsweep.errors import UserError
from hpcsweep.grid import run_reading
from hpcsweep.grid.executors import slurm, slurm_states
from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.tag_names import FAILURE_REASON
from hpcsweep.training.prune_settings import PRUNED_AT_EPOCH

# SLURM's end states of a task that did not do its work, and MLflow's of a run that did not end well
DID_NOT_FINISH = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
DID_NOT_FINISH_RUN = {"FAILED", "KILLED"}
PRUNED = "PRUNED"


@dataclass(frozen=True)
class Row:
    point: str
    run_status: str
    slurm_state: str
    val_acc: float | None
    run_id: str
    reason: str | None = None  # why it failed, or when it was pruned
    log: str | None = None  # where the point's task logged, shown when it did not finish

    def line(self) -> str:
        accuracy = f"{self.val_acc:.4f}" if self.val_acc is not None else "-"
        reason = f"  ({self.reason})" if self.reason else ""
        row = f"{self.run_status:<10} {self.slurm_state:<14} {accuracy:>7}  {self.run_id}  {self.point}{reason}"
        return f"{row}\n{'':<10} log: {self.log}" if self.log else row


def point_runs(uri: str, grid_name: str) -> list:
    """The newest run of each point of the grid, as MLflow `Run`s or REST `RunView`s (run_reading.py)."""
    runs = list(run_reading.latest_by_hash(run_reading.grid_point_runs(uri, grid_name)).values())
    if not runs:
        where = redact(uri)
        raise UserError(f"no grid named {grid_name!r} in {where}: no runs carry tag grid={grid_name}")
    return runs


def log_of_unfinished(run, slurm_state: str) -> str | None:
    unfinished = slurm_state in DID_NOT_FINISH or run.info.status in DID_NOT_FINISH_RUN
    return run.data.tags.get(run_reading.SLURM_LOG) if unfinished and not run_reading.is_pruned(run) else None


def run_state(run) -> tuple[str, str | None]:
    """The run's status as a row shows it, and why it ended so where that is known."""
    if run_reading.is_pruned(run):
        return PRUNED, f"pruned at epoch {run.data.tags[PRUNED_AT_EPOCH]}"
    return run.info.status, run.data.tags.get(FAILURE_REASON)


def status_rows(uri: str, grid_name: str) -> list[Row]:
    runs = point_runs(uri, grid_name)
    keys = [key for key in map(run_reading.job_key, runs) if key]
    states = slurm_states.job_states(keys) if keys else {}
    rows = []
    for run in runs:
        state = states.get(run_reading.job_key(run), "UNKNOWN") if run_reading.job_key(run) else "-"
        status, reason = run_state(run)
        point = run.data.tags.get("point", "?")
        accuracy = run.data.metrics.get("val/acc")
        rows.append(Row(point, status, state, accuracy, run.info.run_id, reason, log_of_unfinished(run, state)))
    return sorted(rows, key=lambda row: row.point)


def summary_state(row: Row) -> str:
    """What the summary counts a row as: pruned, else SLURM's verdict where it has one, else MLflow's."""
    if row.run_status == PRUNED or row.slurm_state in ("-", "UNKNOWN"):
        return row.run_status
    return row.slurm_state


def summary(rows: list[Row]) -> str:
    counts = Counter(map(summary_state, rows))
    return f"{len(rows)} points: " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


@dataclass(frozen=True)
class Cancellation:
    """What `cancel` would stop: the grid's scheduled and running runs, and the job arrays they are in."""

    grid_name: str
    runs: list

    @property
    def job_arrays(self) -> list[str]:
        return sorted({run.data.tags["slurm_job_id"] for run in self.runs if "slurm_job_id" in run.data.tags})

    def description(self) -> str:
        counts = Counter(run.info.status for run in self.runs)
        runs = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        arrays = f"scancel job arrays {', '.join(self.job_arrays)}; " if self.job_arrays else ""
        return f"grid {self.grid_name}: {arrays}mark {len(self.runs)} runs KILLED ({runs})"


def planned_cancellation(uri: str, grid_name: str) -> Cancellation:
    return Cancellation(grid_name, [run for run in point_runs(uri, grid_name) if run_reading.is_active(run)])


def cancel(uri: str, cancellation: Cancellation) -> None:
    """scancel the job arrays, then mark the runs KILLED (through mlflow: status never imports it)."""
    import mlflow

    from hpcsweep.grid.runs import finish_all

    slurm.cancel(cancellation.job_arrays)
    finish_all(mlflow.MlflowClient(uri), [run.info.run_id for run in cancellation.runs], "KILLED")

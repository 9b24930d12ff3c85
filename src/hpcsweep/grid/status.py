"""`hpcsweep status` and `hpcsweep cancel`: one row per point, SLURM's view beside MLflow's.

MLflow knows what training reported (status, last `val/acc`); SLURM knows what happened to the
job (pending, requeued, killed for memory or time, node failure), including deaths that left
the run RUNNING forever. Neither is enough alone, so a row shows both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import mlflow

from hpcsweep.errors import UserError
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors import slurm, slurm_states
from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.tags import FAILURE_REASON


@dataclass(frozen=True)
class Row:
    point: str
    run_status: str
    slurm_state: str
    val_acc: float | None
    run_id: str
    failure_reason: str | None = None

    def line(self) -> str:
        accuracy = f"{self.val_acc:.4f}" if self.val_acc is not None else "-"
        reason = f"  ({self.failure_reason})" if self.failure_reason else ""
        return f"{self.run_status:<10} {self.slurm_state:<14} {accuracy:>7}  {self.run_id}  {self.point}{reason}"


def point_runs(client: mlflow.MlflowClient, grid_name: str) -> list:
    runs = list(grid_runs.latest_by_hash(grid_runs.grid_runs(client, grid_name)).values())
    if not runs:
        where = redact(client.tracking_uri)
        raise UserError(f"no grid named {grid_name!r} in {where}: no runs carry tag grid={grid_name}")
    return runs


def status_rows(client: mlflow.MlflowClient, grid_name: str) -> list[Row]:
    runs = point_runs(client, grid_name)
    keys = [key for key in map(grid_runs.job_key, runs) if key]
    states = slurm_states.job_states(keys) if keys else {}
    rows = [
        Row(
            run.data.tags.get("point", "?"),
            grid_runs.status_name(run),
            states.get(grid_runs.job_key(run), "UNKNOWN") if grid_runs.job_key(run) else "-",
            run.data.metrics.get("val/acc"),
            run.info.run_id,
            run.data.tags.get(FAILURE_REASON),
        )
        for run in runs
    ]
    return sorted(rows, key=lambda row: row.point)


def summary(rows: list[Row]) -> str:
    counts = Counter(row.slurm_state if row.slurm_state not in ("-", "UNKNOWN") else row.run_status for row in rows)
    return f"{len(rows)} points: " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def cancel_grid(client: mlflow.MlflowClient, grid_name: str) -> list[str]:
    """scancel the grid's job arrays and mark its scheduled and running runs KILLED; returns run ids."""
    active = [run for run in point_runs(client, grid_name) if grid_runs.is_active(run)]
    slurm.cancel(sorted({run.data.tags["slurm_job_id"] for run in active if "slurm_job_id" in run.data.tags}))
    for run in active:
        grid_runs.finish(client, run.info.run_id, "KILLED")
    return [run.info.run_id for run in active]

"""Finding a grid's point runs again and reading what they say, without importing mlflow.

`hpcsweep status` of a 1000-point grid is to answer in 3 s (issue 16); importing mlflow alone takes 4 s
here, so what status needs lives here, apart from runs.py, which makes the runs through mlflow.
The predicates read MLflow's `Run` and rest_reader's `RunView` alike (`run.info`, `run.data`).

A server's point runs are read in READ_SLICES slices of their start times at once: the server
builds every run of an answer in Python, with its ~45 params, about 4 ms of CPU a run here, so one
search of 1000 runs keeps one worker busy for 4 s while the others wait. Measured on the 2-core
development machine (benchmarks/README.md): 4.3 s in one search, 3.0 s in 4 slices, 2.8 s in 2,
3.4 s in 16 (each search also costs the server ~50 ms). 4 keeps 4 server cores busy at little cost.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from hpcsweep.tracking import rest_reader
from hpcsweep.tracking.client import is_server
from hpcsweep.training.prune_settings import PRUNED_AT_EPOCH

ROLE = "hpcsweep.role"
ACTIVE = ("SCHEDULED", "RUNNING")
SLURM_LOG = "slurm_log"  # the tag naming the file a point's array task logs to, for `status`
READ_SLICES = 4


def point_query(grid_name: str) -> str:
    return f"tags.grid = '{grid_name}' and tags.`{ROLE}` = 'point'"


def grid_point_runs(uri: str, grid_name: str) -> list:
    """Every point run of the grid, in any experiment, newest first: from a server over REST in
    slices read at once, from a local store through mlflow."""
    if not is_server(uri):
        import mlflow

        from hpcsweep.grid.runs import grid_runs

        return grid_runs(mlflow.MlflowClient(uri), grid_name)
    experiments = rest_reader.experiment_ids(uri)
    query = point_query(grid_name)
    times = rest_reader.start_times(uri, experiments, query)
    if times is None:
        return []
    with ThreadPoolExecutor(READ_SLICES) as pool:
        slices = pool.map(lambda part: rest_reader.search_runs(uri, experiments, f"{query}{part}"), time_slices(*times))
        runs = [run for part in slices for run in part]
    return sorted(runs, key=lambda run: run.info.start_time, reverse=True)


def time_slices(first: int, last: int) -> list[str]:
    """READ_SLICES filter clauses that split start times into equal spans; the first and the last
    are open, so a run that starts while status reads is in one of them."""
    bounds = [first + (last - first) * index // READ_SLICES for index in range(1, READ_SLICES)]
    lower = [""] + [f" and attributes.start_time >= {bound}" for bound in bounds]
    upper = [f" and attributes.start_time < {bound}" for bound in bounds] + [""]
    return [low + high for low, high in zip(lower, upper, strict=True)]


def latest_by_hash(runs: list) -> dict:
    """The newest run of each config_hash (relaunches add runs); a run without one stands alone.
    `runs` come newest first."""
    latest = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("config_hash") or run.info.run_id, run)
    return latest


def job_key(run) -> str | None:
    """The array task a run was submitted as, named as SLURM names it: ARRAYJOB_TASK."""
    tags = run.data.tags
    return f"{tags['slurm_job_id']}_{tags.get('slurm_array_task_id', '0')}" if "slurm_job_id" in tags else None


def is_active(run) -> bool:
    return run.info.status in ACTIVE


def is_pruned(run) -> bool:
    """Stopped early on purpose (a grid's `prune:`): over, not to be run again."""
    return run.info.status == "KILLED" and PRUNED_AT_EPOCH in run.data.tags

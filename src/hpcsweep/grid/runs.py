"""The MLflow side of a grid: a parent run per launch, a child run per point, and finding them again.

The parent is created at launch, before the job arrays are submitted; the children right after,
by the launcher with status SCHEDULED and the tags of their job array task (or, where a task
started first, by the task itself: run_ids.py makes sure it is one or the other). Each has the
point's params and the tags `grid`, `config_hash`, `mlflow.parentRunId` (and `hpcsweep.tuned`, the
tuned keys joined by ",", for a grid that tunes some); each job then trains into its own child, so
the MLflow UI shows the whole study, queued points included, grouped under the launch. What
every child of a launch shares (`Lineage`) is written into the points files, for the tasks. The
experiment is created here, once, before jobs start: concurrent
`set_experiment` calls from many jobs were seen to put runs into the Default experiment. It is
marked as model training (`ui_metadata.py`), so that MLflow's UI opens its runs table; the launch
run carries the launching command's git commit, and each point says which grid file it came from
(its Source in the UI). A point's own commit is the one its job trains with, tagged when it opens.
The launch run's artifacts (grid file, points, command) are readable by everyone who may read the
experiment: every URI and secret in them is redacted; the points files jobs read keep them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities import Run, SourceType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from hpcsweep.config import Config
from hpcsweep.grid.run_reading import ROLE, SLURM_LOG, point_query
from hpcsweep.grid.spec import Grid, Point
from hpcsweep.tracking.credentials import redact_text, redact_values
from hpcsweep.tracking.tags import git_source_tags, logged_params
from hpcsweep.tracking.ui_metadata import source_tags
from hpcsweep.training.prune_settings import PruneSettings

TUNED = "hpcsweep.tuned"  # the config keys a grid tunes per configuration, joined by ","
SUPPRESS_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
CLIENT_THREADS = 16  # concurrent requests to the server: enough to hide its latency, not to flood it


def launch_source(grid_file: str, source_type: int) -> dict[str, str]:
    return source_tags(f"hpcsweep grid {grid_file}", SourceType.to_string(source_type))


def create_parent(client: mlflow.MlflowClient, grid: Grid, experiment: str, command: str) -> str:
    tags = {
        "grid": grid.name,
        ROLE: "launch",
        MLFLOW_RUN_NAME: f"{grid.name} launch",
        **launch_source(grid.path.name, SourceType.LOCAL),
        **git_source_tags(),
    }
    run = client.create_run(experiment, tags=tags)
    files = {
        grid.path.name: redact_text(grid.path.read_text()),
        "points.json": json.dumps(redact_values(points_data(grid.name, grid.points)), indent=1),
        "command.txt": redact_text(command) + "\n",
    }
    for name, text in files.items():
        client.log_text(run.info.run_id, text, f"launch/{name}")
    return run.info.run_id


@dataclass(frozen=True)
class Lineage:
    """What every child run of one launch shares: where it goes and what it belongs to."""

    grid: str
    grid_file: str  # its name: the children's Source in the UI
    experiment_id: str
    parent_run_id: str
    tuned: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> Lineage:
        return cls(**{**data, "tuned": tuple(data["tuned"])})


def create_child(
    client: mlflow.MlflowClient, lineage: Lineage, label: str, config: Config, tags: dict[str, str], scheduled: bool
) -> str:
    """A point's run with its params and tags; SCHEDULED for one made at launch, RUNNING (MLflow's
    start) for one a task makes as it starts training."""
    tags = {
        "grid": lineage.grid,
        ROLE: "point",
        "config_hash": config.hash,
        MLFLOW_PARENT_RUN_ID: lineage.parent_run_id,
        MLFLOW_RUN_NAME: label.replace(", ", " ")[:250],
        "point": label,
        **launch_source(lineage.grid_file, SourceType.JOB),
        **({TUNED: ",".join(lineage.tuned)} if lineage.tuned else {}),
        **tags,
    }
    run = client.create_run(lineage.experiment_id, tags=tags)
    client.log_batch(
        run.info.run_id, params=[mlflow.entities.Param(key, str(value)) for key, value in logged_params(config).items()]
    )
    if scheduled:
        client.update_run(run.info.run_id, status="SCHEDULED")
    return run.info.run_id


def job_tags(job_id: str, task: int, log: str) -> dict[str, str]:
    """The tags that tie a run to its array task: for relaunch (is it alive?) and `status` (its log)."""
    return {"slurm_job_id": job_id, "slurm_array_task_id": str(task), SLURM_LOG: log}


def search_newest_first(client: mlflow.MlflowClient, experiment_ids: list[str], query: str = "") -> list[Run]:
    return client.search_runs(experiment_ids, query, max_results=50_000, order_by=["attributes.start_time DESC"])


def grid_runs(client: mlflow.MlflowClient, grid_name: str) -> list[Run]:
    """Every point run of the grid, in any experiment, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return search_newest_first(client, experiments, point_query(grid_name))


def finish(client: mlflow.MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def finish_all(client: mlflow.MlflowClient, run_ids: list[str], status: str) -> None:
    """`finish` each, from CLIENT_THREADS threads: a round trip each, minutes for 1000 in sequence.
    Without MLflow's link to each run it ends: two lines a run, 2000 for a cancelled 1000-point grid."""
    with quiet_run_links(), ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(lambda run_id: finish(client, run_id, status), run_ids))


@contextlib.contextmanager
def quiet_run_links() -> Iterator[None]:
    """MLflow's client prints a link to every run it ends unless this (public) variable is set."""
    before = os.environ.get(SUPPRESS_RUN_LINKS)
    os.environ[SUPPRESS_RUN_LINKS] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[SUPPRESS_RUN_LINKS]
        else:
            os.environ[SUPPRESS_RUN_LINKS] = before


def points_data(
    grid_name: str,
    points: list[Point],
    lineage: Lineage | None = None,
    pruning: PruneSettings | None = None,
) -> dict:
    return {
        "grid": grid_name,
        **({"lineage": asdict(lineage)} if lineage else {}),
        **({"pruning": pruning.to_dict()} if pruning else {}),
        "points": [{"point": p.index, "label": p.label, "config": p.config.to_dict()} for p in points],
    }


def points_document(
    grid_name: str, points: list[Point], lineage: Lineage | None = None, pruning: PruneSettings | None = None
) -> str:
    """The JSON task i of a job array reads its point from (entry i): full config, and the launch its
    run belongs to (None in a dry run); for a grid that prunes, the settings and the study every task
    reports to."""
    return json.dumps(points_data(grid_name, points, lineage, pruning), indent=1)

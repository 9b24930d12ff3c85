"""`hpcsweep grid`: from a validated grid to MLflow runs and running jobs, failing fast.

Order matters: everything that can be checked is checked before anything is created (every
point is a valid config, the tracking server answers, sbatch exists, the prepared data is where
jobs will read it, the grid is not accidentally huge), so a mistake costs one error line instead
of a hundred dead jobs. Then: the launch folder (points files, job scripts, logs), the parent
and child runs, and one sbatch per resource shape. A relaunch skips points that already have a
FINISHED run (or a live job) and resubmits failed and killed ones into new runs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import mlflow

from hpcsweep.atomic import atomic_file
from hpcsweep.config import Config
from hpcsweep.errors import UserError
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors import local, slurm
from hpcsweep.grid.spec import MAX_POINTS_WITHOUT_YES, Grid, Point
from hpcsweep.tracking.run import DEFAULT_URI, tracking_uri

LAUNCH_ROOT = Path("runs")
CLIENT_THREADS = 16


@dataclass(frozen=True)
class LaunchOptions:
    executor: str  # local | slurm
    dry_run: bool = False
    max_parallel: int | None = None
    template: str = slurm.DEFAULT_TEMPLATE
    rerun: bool = False
    yes: bool = False
    command: str = ""


def absolute_uri(uri: str) -> str:
    """A relative SQLite path would mean a different file in every job's working directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def for_jobs(config: Config, uri: str) -> Config:
    """The config as jobs must see it: absolute paths and the one tracking URI of the launch."""
    data = dataclasses.replace(config.data, prepared_dir=str(Path(config.data.prepared_dir).resolve()))
    tracking = dataclasses.replace(
        config.tracking, uri=uri, checkpoint_dir=str(Path(config.tracking.checkpoint_dir).resolve())
    )
    return dataclasses.replace(config, data=data, tracking=tracking)


def check_tracking_server(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                return
        except OSError as error:
            raise UserError(f"tracking server {uri} does not answer ({error}); start it or set tracking.uri") from None
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # any store failure means jobs could not log
        raise UserError(f"tracking store {uri} is not usable ({error})") from None


def preflight(grid: Grid, options: LaunchOptions) -> None:
    if len(grid.points) > MAX_POINTS_WITHOUT_YES and not options.yes:
        raise UserError(f"{grid.path}: {len(grid.points)} points; grids over {MAX_POINTS_WITHOUT_YES} need --yes")
    if options.executor == "slurm" and not options.dry_run:
        slurm.require_sbatch()
    for prepared in sorted({Path(p.config.data.prepared_dir) for p in grid.points}):
        if not (prepared / "stats.json").is_file():
            raise UserError(
                f"{prepared}: no prepared data where jobs will read it; run `hpcsweep prepare` "
                f"(or `dvc pull prepare`) first"
            )
    if not options.dry_run:
        check_tracking_server(grid.points[0].config.tracking.uri)


def shape_of(point: Point) -> tuple:
    """Points with the same shape share one job array: same nodes, tasks, GPUs and SLURM settings."""
    train, resources = point.config.train, point.config.slurm
    return (train.num_nodes, train.devices, train.accelerator == "gpu", json.dumps(dataclasses.asdict(resources)))


def job_spec(grid: Grid, points: list[Point], folder: Path, points_file: Path, options: LaunchOptions) -> slurm.JobSpec:
    config = points[0].config
    resources = config.slurm
    return slurm.JobSpec(
        name=f"hpcsweep-{grid.name}",
        array_size=len(points),
        max_parallel=options.max_parallel or resources.max_parallel,
        nodes=config.train.num_nodes,
        tasks_per_node=config.train.devices,
        cpus_per_task=resources.cpus_per_task,
        mem=resources.mem,
        time=resources.time,
        workdir=Path.cwd(),
        log_dir=folder / "logs",
        command=[sys.executable, "-m", "hpcsweep", "run-point", str(points_file)],
        gpus_per_node=config.train.devices if config.train.accelerator == "gpu" else None,
        partition=resources.partition,
        account=resources.account,
        qos=resources.qos,
        setup=resources.setup,
        extra=resources.extra,
    )


def write_text(path: Path, text: str) -> Path:
    with atomic_file(path) as temporary:
        temporary.write_text(text)
    return path


@dataclass
class Batch:
    """One job array: its points, files and (after submission) SLURM job id."""

    points: list[Point]
    points_file: Path
    script: Path | None = None
    job_id: str | None = None


def prepare_batches(
    grid: Grid, points: list[Point], folder: Path, options: LaunchOptions, run_ids: dict[int, str]
) -> list[Batch]:
    batches = []
    (folder / "logs").mkdir(parents=True, exist_ok=True)  # SLURM fails a job whose --output folder is missing
    ordered = sorted(points, key=shape_of)
    for number, (_, group) in enumerate(groupby(ordered, key=shape_of)):
        group = sorted(group, key=lambda p: p.index)
        batch = Batch(group, folder / f"points-{number}.json")
        write_text(batch.points_file, grid_runs.points_document(grid.name, group, run_ids))
        if options.executor == "slurm":
            spec = job_spec(grid, group, folder, batch.points_file, options)
            batch.script = write_text(folder / f"job-{number}.sbatch", slurm.render_job_script(spec, options.template))
        batches.append(batch)
    return batches


def points_to_run(client: mlflow.MlflowClient, grid: Grid, options: LaunchOptions) -> list[Point]:
    """All points, or (relaunch) those without a FINISHED run or a job still queued or running."""
    if options.rerun:
        return grid.points
    latest = grid_runs.latest_by_hash(grid_runs.grid_runs(client, grid.name))
    jobs = [grid_runs.job_key(run) for run in latest.values() if grid_runs.is_active(run) and grid_runs.job_key(run)]
    alive = slurm.queued_states(jobs) if jobs and options.executor == "slurm" else {}

    def settled(run) -> bool:
        return run.info.status == "FINISHED" or (grid_runs.is_active(run) and grid_runs.job_key(run) in alive)

    return [p for p in grid.points if not (p.config.hash in latest and settled(latest[p.config.hash]))]


def launch(grid: Grid, options: LaunchOptions) -> Path:
    """Validate, create the runs, submit or run; returns the launch folder."""
    uri = absolute_uri(tracking_uri(grid.points[0].config) if grid.points else DEFAULT_URI)
    grid = dataclasses.replace(
        grid, points=[dataclasses.replace(p, config=for_jobs(p.config, uri)) for p in grid.points]
    )
    preflight(grid, options)
    folder = (LAUNCH_ROOT / grid.name / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if options.dry_run:
        batches = prepare_batches(grid, grid.points, folder, options, run_ids={})
        report_files(grid, batches, "dry run: nothing submitted, no run created")
        return folder
    client = mlflow.MlflowClient(uri)
    experiment = grid_runs.experiment_id(client, grid.experiment)
    todo = points_to_run(client, grid, options)
    if not todo:
        print(f"{grid.name}: all {len(grid.points)} points already have a finished run or a live job; nothing to do")
        return folder
    if options.executor == "slurm":
        for batch in prepare_batches(grid, todo, folder, options, run_ids={}):
            slurm.test_only(batch.script)  # a partition or account sbatch refuses: no run is created
    document = grid_runs.points_document(grid.name, grid.points, {})
    parent = grid_runs.create_parent(client, grid, experiment, options.command, document)
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:  # a round trip each: 1000 in sequence take minutes
        created = pool.map(lambda p: grid_runs.create_child(client, experiment, parent, grid, p), todo)
        run_ids = dict(zip((p.index for p in todo), created))
    batches = prepare_batches(grid, todo, folder, options, run_ids)
    print(
        f"{grid.name}: {len(todo)} of {len(grid.points)} points to run, experiment {grid.experiment!r}, "
        f"parent run {parent}"
    )
    try:
        run_batches(client, batches, run_ids, options)
    finally:
        grid_runs.finish(client, parent, "FINISHED")
    return folder


def run_batches(
    client: mlflow.MlflowClient, batches: list[Batch], run_ids: dict[int, str], options: LaunchOptions
) -> None:
    for batch in batches:
        if options.executor == "local":

            def mark_killed(index: int, batch=batch) -> None:
                run_id = run_ids[batch.points[index].index]
                if grid_runs.is_active(client.get_run(run_id)):
                    grid_runs.finish(client, run_id, "KILLED")

            local.run_points(batch.points_file, len(batch.points), on_interrupt=mark_killed)
            continue
        try:
            batch.job_id = slurm.submit(batch.script)
        except UserError:
            for point in batch.points:
                grid_runs.finish(client, run_ids[point.index], "FAILED")
            raise
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(
                pool.map(
                    lambda task: tag_with_job(client, run_ids[batch.points[task].index], batch.job_id, task),
                    range(len(batch.points)),
                )
            )
        print(f"submitted job array {batch.job_id} ({len(batch.points)} points): {batch.script}")


def tag_with_job(client: mlflow.MlflowClient, run_id: str, job_id: str, task: int) -> None:
    client.log_batch(
        run_id,
        tags=[mlflow.entities.RunTag("slurm_job_id", job_id), mlflow.entities.RunTag("slurm_array_task_id", str(task))],
    )


def report_files(grid: Grid, batches: list[Batch], what: str) -> None:
    print(f"{grid.name}: {len(grid.points)} points in {len(batches)} job array(s); {what}")
    for batch in batches:
        print(f"  points: {batch.points_file}")
        if batch.script:
            print(f"  script: {batch.script}")

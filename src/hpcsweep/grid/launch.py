"""`hpcsweep grid`: from a validated grid to MLflow runs and running jobs, failing fast.

Order matters: everything that can be checked is checked before anything is created (every
point is a valid config, the tracking server answers, the executor can run here (sbatch exists),
the prepared data is where jobs will read it, with the validation split the points ask for
(data.val_size), the grid is not accidentally huge, the scheduler would accept the jobs), so a
mistake costs one error line instead of a hundred dead jobs. Then:
the launch folder (points files, job scripts, logs; a new one per launch, even two in the same
second), the parent run, one batch per resource shape handed to the executor (one sbatch each under
SLURM; a shape with more points than the scheduler's largest job array becomes several batches),
and the child runs, created while the jobs wait in the queue (child_runs.py). Messages show the
tracking URI redacted. A relaunch first makes the runs an interrupted launch left unmade
(queued_tasks.py), then skips points that already have a FINISHED or pruned run (or a live job)
and resubmits failed and killed ones into new runs. A grid that prunes gets one Optuna study,
created here before any job starts, in a journal file beside its launch folders (runs/GRID/), the
same for every launch of the grid: a relaunched point is judged against the peers that earlier
launches finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import mlflow

from hpcsweep.atomic import FILE_MODE, PRIVATE, atomic_file
from hpcsweep.config import Config
from hpcsweep.data.stats import check_val_size, read_stats
from hpcsweep.errors import UserError
from hpcsweep.grid import queued_tasks, run_reading
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.child_runs import ChildRuns
from hpcsweep.grid.executors.base import Batch, Executor
from hpcsweep.grid.spec import Grid, Point
from hpcsweep.tracking.client import DEFAULT_URI, absolute_uri, check_tracking_server, tracking_uri
from hpcsweep.tracking.credentials import redact_text
from hpcsweep.tracking.experiments import experiment_id
from hpcsweep.tracking.tags import data_md5
from hpcsweep.training.prune_settings import PruneSettings, open_study

LAUNCH_ROOT = Path("runs")
PRUNING_JOURNAL = "pruning.optuna-journal"  # in LAUNCH_ROOT/GRID: the grid's Optuna study


@dataclass(frozen=True)
class LaunchOptions:
    executor: Executor
    dry_run: bool = False
    rerun: bool = False
    command: str = ""


def for_jobs(config: Config, uri: str) -> Config:
    """The config as jobs must see it: absolute paths and the one tracking URI of the launch."""
    data = dataclasses.replace(config.data, prepared_dir=str(Path(config.data.prepared_dir).resolve()))
    tracking = dataclasses.replace(
        config.tracking, uri=uri, checkpoint_dir=str(Path(config.tracking.checkpoint_dir).resolve())
    )
    return dataclasses.replace(config, data=data, tracking=tracking)


def preflight(grid: Grid, options: LaunchOptions) -> None:
    if not options.dry_run:
        options.executor.check()
    options.executor.check_points(grid.points)
    check_prepared_data(grid.points)
    if not options.dry_run:
        check_tracking_server(grid.points[0].config.tracking.uri)


def check_prepared_data(points: list[Point]) -> None:
    """The prepared data is where jobs will read it, prepared with each point's data.val_size: the
    check every job's training makes, made once here so that a mismatch costs one line, not a grid
    of failed runs."""

    val_sizes: dict[Path, set[int]] = {}
    for point in points:
        val_sizes.setdefault(Path(point.config.data.prepared_dir), set()).add(point.config.data.val_size)
    for prepared, sizes in sorted(val_sizes.items()):
        if not (prepared / "stats.json").is_file():
            raise UserError(
                f"{prepared}: no prepared data where jobs will read it; run `hpcsweep prepare` "
                f"(or `dvc pull prepare`) first"
            )
        stats = read_stats(prepared)
        for val_size in sorted(sizes):
            check_val_size(val_size, stats, prepared)


def shape_of(point: Point) -> tuple:
    """Points with the same shape share one job array: same nodes, tasks, GPUs and SLURM settings."""
    train, resources = point.config.train, point.config.slurm
    return (train.num_nodes, train.devices, train.accelerator == "gpu", json.dumps(dataclasses.asdict(resources)))


def make_batches(grid: Grid, points: list[Point], folder: Path, max_size: int | None) -> list[Batch]:
    """One batch per resource shape, its points in grid order, cut into batches of at most `max_size`
    points (None: any number)."""
    shapes = [sorted(group, key=lambda p: p.index) for _, group in groupby(sorted(points, key=shape_of), key=shape_of)]
    chunks = [chunk for shape in shapes for chunk in cut(shape, max_size or len(shape))]
    return [Batch(number, grid.name, chunk, folder) for number, chunk in enumerate(chunks)]


def cut(points: list[Point], size: int) -> list[list[Point]]:
    """`points` in order, in runs of at most `size`."""
    return [points[start : start + size] for start in range(0, len(points), size)]


def pruning_for_jobs(grid: Grid) -> PruneSettings | None:
    """The grid's pruning settings with its study: named after the grid, in a journal at an absolute
    path that every launch of the grid and every job (on any node of the shared file system) finds."""
    if grid.prune is None:
        return None
    journal = (LAUNCH_ROOT / grid.name / PRUNING_JOURNAL).resolve()
    return dataclasses.replace(grid.prune, study=grid.name, journal=str(journal))


def write_points_file(batch: Batch, lineage: grid_runs.Lineage | None, pruning: PruneSettings | None) -> None:
    """Readable as the umask allows, unless it holds a secret: jobs read the tracking URI here, and one
    taken from MLFLOW_TRACKING_URI may carry a password."""
    document = grid_runs.points_document(batch.grid_name, batch.points, lineage, pruning)
    with atomic_file(batch.points_file, mode=PRIVATE if redact_text(document) != document else FILE_MODE) as temporary:
        temporary.write_text(document)


def points_to_run(client: mlflow.MlflowClient, grid: Grid, options: LaunchOptions, queued: set[str]) -> list[Point]:
    """All points, or (relaunch) those without a FINISHED or pruned run on the data prepared now or
    a job still queued or running; `queued`: config hashes of points an earlier launch's tasks wait
    to train. A run that ended on other prepared data (another split or archive: its `data_md5` tag)
    is not its point's answer now, so the point trains again."""
    if options.rerun:
        return grid.points
    latest = run_reading.latest_by_hash(grid_runs.grid_runs(client, grid.name))
    jobs = [
        run_reading.job_key(run) for run in latest.values() if run_reading.is_active(run) and run_reading.job_key(run)
    ]
    alive = options.executor.live_jobs(jobs)
    digests: dict[str, str] = {}

    def ended(run) -> bool:
        return run.info.status == "FINISHED" or run_reading.is_pruned(run)

    def on_data_now(point: Point, run) -> bool:
        prepared = point.config.data.prepared_dir
        if prepared not in digests:
            digests[prepared] = data_md5(Path(prepared))
        return run.data.tags.get("data_md5", digests[prepared]) == digests[prepared]

    ended_points = [point for point in grid.points if point.config.hash in latest and ended(latest[point.config.hash])]
    elsewhere = [point for point in ended_points if not on_data_now(point, latest[point.config.hash])]
    done = {point.config.hash for point in ended_points} - {point.config.hash for point in elsewhere}
    if elsewhere:
        print(
            f"{grid.name}: {len(elsewhere)} points ended on other prepared data than "
            f"{elsewhere[0].config.data.prepared_dir} holds now (their runs' data_md5): they train again",
            flush=True,
        )

    def settled(point: Point) -> bool:
        run = latest.get(point.config.hash)
        alive_job = run is not None and run_reading.is_active(run) and run_reading.job_key(run) in alive
        return point.config.hash in queued or point.config.hash in done or alive_job

    return [point for point in grid.points if not settled(point)]


def new_launch_folder(grid_name: str) -> Path:
    """runs/GRID/YYYYmmdd-HHMMSS, created here: a launch in the same second (another terminal, a
    script) gets the next free -2, -3, ..., never a folder whose points files another launch wrote."""
    parent = (LAUNCH_ROOT / grid_name).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count(1):
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()  # exclusive: of two launches racing for a name, one gets it
            return folder
        except FileExistsError:
            continue


def launch(grid: Grid, options: LaunchOptions) -> Path | None:
    """Validate, submit or run, create the runs; returns the launch folder (None: nothing to run)."""
    started = time.monotonic()
    uri = absolute_uri(tracking_uri(grid.points[0].config) if grid.points else DEFAULT_URI)
    grid = dataclasses.replace(
        grid, points=[dataclasses.replace(p, config=for_jobs(p.config, uri)) for p in grid.points]
    )
    preflight(grid, options)
    executor = options.executor
    max_batch_size = executor.max_batch_size()
    pruning = pruning_for_jobs(grid)
    if options.dry_run:
        folder = new_launch_folder(grid.name)
        batches = make_batches(grid, grid.points, folder, max_batch_size)
        for batch in batches:
            write_points_file(batch, None, pruning)
            executor.prepare(batch)
        report_files(grid, batches, "dry run: nothing submitted, no run created")
        return folder
    client = mlflow.MlflowClient(uri)
    experiment = experiment_id(client, grid.experiment)
    queued = queued_tasks.complete(client, (LAUNCH_ROOT / grid.name).resolve(), executor)
    todo = points_to_run(client, grid, options, queued)
    if not todo:
        print(
            f"{grid.name}: all {len(grid.points)} points already have a finished or pruned run or a live job; "
            f"nothing to do"
        )
        return None
    folder = new_launch_folder(grid.name)
    batches = make_batches(grid, todo, folder, max_batch_size)
    for batch in batches:
        executor.prepare(batch)
    for batch in batches:
        executor.test(batch)  # a partition or account the scheduler refuses: no run is created
    if pruning:
        open_study(pruning)  # once, before the jobs: they load it
    parent = grid_runs.create_parent(client, grid, experiment, options.command)
    lineage = grid_runs.Lineage(grid.name, grid.path.name, experiment, parent, tuple(grid.tune))
    for batch in batches:
        write_points_file(batch, lineage, pruning)
    print(
        f"{grid.name}: {len(todo)} of {len(grid.points)} points to run, experiment {grid.experiment!r}, "
        f"parent run {parent}",
        flush=True,
    )
    children = ChildRuns(client, lineage)
    submitted = False
    try:
        if executor.runs_in_foreground:
            children.create_now(batches)
        for batch in batches:
            executor.submit(batch, children.batch_runs(batch))
        submitted = True
    finally:
        if submitted and not executor.runs_in_foreground:
            print(f"{grid.name}: {len(todo)} points queued in {time.monotonic() - started:.1f} s", flush=True)
        children.close(cancel=not submitted)
        grid_runs.finish(client, parent, "FINISHED")
    return folder


def report_files(grid: Grid, batches: list[Batch], what: str) -> None:
    print(f"{grid.name}: {len(grid.points)} points in {len(batches)} job array(s); {what}")
    for batch in batches:
        print(f"  points: {batch.points_file}")
        if batch.script:
            print(f"  script: {batch.script}")

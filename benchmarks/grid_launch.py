"""How long a dry run of a 1000-point grid takes, and how many sbatch calls it would make.

Run by hand from the project root (it needs prepared data where params.yaml says, and a
tracking server for the second part):

    python benchmarks/grid_launch.py [--server http://127.0.0.1:5000]

1. `--dry-run` of a 1000-point grid: expand, validate every point as a full config, write the
   points file and the job script (one per resource shape = one sbatch call when submitted).
   A real launch, with its runs, is timed end to end on the dev cluster by scale.py.
2. The cost estimate the dry run prints for the same 1000 points, against the server, after
   `--earlier` FINISHED runs of each of the grid's 10 settings (one per batch size) are logged
   there for it to find: one search per setting, so 10 however many points.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow

from hpcsweep.config import parse_overrides
from hpcsweep.grid.cost import grid_cost
from hpcsweep.grid.executors.slurm import SlurmExecutor
from hpcsweep.grid.launch import LaunchOptions, launch
from hpcsweep.grid.runs import CLIENT_THREADS
from hpcsweep.grid.spec import load_grid
from hpcsweep.tracking.experiments import experiment_id
from hpcsweep.tracking.tags import DEVICE_TYPE

GRID = """name: launch-benchmark
experiment: launch-benchmark
base: {max_epochs: 2, accelerator: cpu}
grid: {lr: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1],
       batch_size: [64, 128, 192, 256, 320, 384, 448, 512, 576, 640]}
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
slurm: {partition: debug}
"""


def time_dry_run(folder: Path, repeats: int = 3) -> tuple[float, int, int]:
    grid_file = folder / "grid.yaml"
    grid_file.write_text(GRID)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        grid = load_grid(grid_file, Path("params.yaml"), parse_overrides([]))
        launched = launch(grid, LaunchOptions(executor=SlurmExecutor(), dry_run=True))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), len(grid.points), len(list(launched.glob("job-*.sbatch")))


def log_earlier_runs(client: mlflow.MlflowClient, experiment: str, configs: list, per_setting: int) -> None:
    """`per_setting` FINISHED runs of each distinct batch size of `configs`, as trainings leave them."""
    settings = {config.train.batch_size: config.train for config in configs}

    def log(train) -> None:
        run = client.create_run(experiment, tags={DEVICE_TYPE: "CPU"})
        params = {key: getattr(train, key) for key in ("model", "batch_size", "precision", "max_epochs", "devices")}
        params.update(num_nodes=train.num_nodes, limit_train_samples=train.limit_train_samples)
        client.log_batch(
            run.info.run_id,
            metrics=[mlflow.entities.Metric("total_time_s", 60.0, 0, 0)],
            params=[mlflow.entities.Param(key, str(value)) for key, value in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(log, [train for train in settings.values() for _ in range(per_setting)]))


def time_cost_estimate(server: str, per_setting: int, repeats: int = 3) -> tuple[float, list[str]]:
    grid_file = Path(tempfile.mkdtemp()) / "grid.yaml"
    grid_file.write_text(GRID)
    grid = load_grid(grid_file, Path("params.yaml"), parse_overrides([]))
    configs = [point.config for point in grid.points]
    client = mlflow.MlflowClient(server)
    log_earlier_runs(client, experiment_id(client, grid.experiment), configs, per_setting)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        lines = grid_cost(configs, server)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="an MLflow tracking server to time child-run creation against")
    parser.add_argument("--earlier", type=int, default=5, help="earlier runs per setting for the cost estimate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        seconds, points, scripts = time_dry_run(Path(folder))
    print(
        f"dry run: {points} points validated and written in {seconds:.2f} s (median of 3); "
        f"{scripts} job script(s) = {scripts} sbatch call(s)"
    )
    if args.server:
        seconds, lines = time_cost_estimate(args.server, args.earlier)
        print(f"cost estimate of the 1000 points: {seconds:.2f} s (median of 3); it printed {lines[0]!r}")


if __name__ == "__main__":
    main()

"""How long launching a 1000-point grid takes, and how many sbatch calls it makes.

Run by hand from the project root (it needs prepared data where params.yaml says, and a
tracking server for the second part):

    python benchmarks/grid_launch.py [--server http://127.0.0.1:5000] [--runs 100]

1. `--dry-run` of a 1000-point grid: expand, validate every point as a full config, write the
   points file and the job script (one per resource shape = one sbatch call when submitted).
2. Creating the MLflow child runs a real launch needs (SCHEDULED, with params and tags), timed
   for `--runs` of them against the server and extrapolated to 1000: this, not sbatch, is what a
   real launch spends its time on.
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
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors.slurm import SlurmExecutor
from hpcsweep.grid.launch import CLIENT_THREADS, LaunchOptions, launch
from hpcsweep.grid.spec import load_grid
from hpcsweep.tracking.experiments import experiment_id

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


def time_child_runs(server: str, count: int) -> float:
    grid_file = Path(tempfile.mkdtemp()) / "grid.yaml"
    grid_file.write_text(GRID)
    grid = load_grid(grid_file, Path("params.yaml"), parse_overrides([]))
    client = mlflow.MlflowClient(server)
    experiment = experiment_id(client, grid.experiment)
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:  # as launch does
        list(
            pool.map(
                lambda p: grid_runs.create_child(client, experiment, "benchmark-parent", grid, p), grid.points[:count]
            )
        )
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="an MLflow tracking server to time child-run creation against")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        seconds, points, scripts = time_dry_run(Path(folder))
    print(
        f"dry run: {points} points validated and written in {seconds:.2f} s (median of 3); "
        f"{scripts} job script(s) = {scripts} sbatch call(s)"
    )
    if args.server:
        per_run = time_child_runs(args.server, args.runs)
        print(f"child runs: {per_run * 1000:.0f} ms each over {args.runs}; 1000 points -> {per_run * 1000:.0f} s")


if __name__ == "__main__":
    main()

"""How long `hpcsweep report` and `status` take on a grid of 1000 finished runs of 30 epochs (issue 16:
under 30 s and under 3 s).

Run by hand from the project root, on an otherwise idle machine (it prints the load average):

    .venv/bin/python benchmarks/report_scale.py [--runs 1000] [--epochs 30] [--repeats 3]

1. PostgreSQL + SeaweedFS + `hpcsweep server` (2 workers), assembled exactly as the tests'
   `shared_server` fixture does, from tests/helpers/services.py.
2. One grid, `report-scale`, filled with `--runs` FINISHED point runs under one launch run, each
   shaped as a launched grid point: tags `grid`, `hpcsweep.role=point`, `config_hash`,
   `mlflow.parentRunId`, `point`, `device_type`; params as `logged_params(config)` logs them,
   optimizer, lr and seed varying; `--epochs` epochs of every metric the report reads
   (report/records.py HISTORIES), then `total_time_s`. Each run is three requests (create, one
   log_batch, terminate), from `--threads` threads; the fill is timed too.
3. `hpcsweep report --grid report-scale` end to end, as a user types it (the CLI in a subprocess:
   Python start, reading the runs and histories, analysis, plots, files, the upload onto the
   launch run), the median of `--repeats`; then `hpcsweep status report-scale` the same way (its
   runs carry no SLURM job, so it asks SLURM nothing); then `fetch_records` alone in this process
   (reading the runs and their histories), the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from hpcsweep.config import OPTIMIZERS, Config, load_config
from hpcsweep.grid import run_reading
from hpcsweep.report.records import ACCURACY, HISTORIES, fetch_records
from hpcsweep.tracking.tags import logged_params

ROOT = Path(__file__).resolve().parents[1]

from tracking_server import clean_environment, postgres_s3_servers, run_reporting_skips  # noqa: E402  (beside this file)

GRID = "report-scale"
SEEDS = 3


def point_config(base: Config, index: int) -> Config:
    """Point `index` of the grid: seeds vary fastest, then the optimizer, then the learning rate."""
    optimizer = OPTIMIZERS[index // SEEDS % len(OPTIMIZERS)]
    lr = round(0.001 * (1 + index // (SEEDS * len(OPTIMIZERS))), 6)
    return dataclasses.replace(
        base, train=dataclasses.replace(base.train, optimizer=optimizer, lr=lr, seed=index % SEEDS)
    )


def epoch_metrics(index: int, epochs: int) -> list[Metric]:
    """What a training of `epochs` epochs logs, one value of each HISTORIES metric per epoch."""
    now = int(time.time() * 1000)
    quality = 0.8 + 0.15 * ((index * 7919) % 1000) / 1000  # each point a different final accuracy
    metrics = []
    for epoch in range(epochs):
        progress = (epoch + 1) / epochs
        values = {
            ACCURACY: quality * progress,
            "test/acc": quality * progress - 0.01,
            "epoch_time_s": 10.0 + index % 5,
            "train/loss": 2.0 * (1 - progress) + 0.1,
            "train/images_per_s": 5000.0 + index % 11,
            "train/mfu": 0.3,
        }
        assert set(values) == set(HISTORIES), "the report reads other metrics now: log those"
        metrics += [Metric(name, value, now + epoch * 1000, epoch) for name, value in values.items()]
    return metrics + [Metric("total_time_s", epochs * (10.0 + index % 5), now + epochs * 1000, epochs)]


def fill(client: mlflow.MlflowClient, runs: int, epochs: int, threads: int) -> float:
    """The grid's launch run and `runs` FINISHED point runs under it; returns the seconds it took."""
    started = time.perf_counter()
    experiment = client.create_experiment(f"{GRID}-{os.getpid()}")
    launch = client.create_run(experiment, tags={"grid": GRID, run_reading.ROLE: "launch"}).info.run_id
    base = load_config(ROOT / "params.yaml")

    def one(index: int) -> None:
        config = point_config(base, index)
        label = f"optimizer={config.train.optimizer}, lr={config.train.lr}, seed={config.train.seed}"
        tags = {
            "grid": GRID,
            run_reading.ROLE: "point",
            "config_hash": config.hash,
            MLFLOW_PARENT_RUN_ID: launch,
            MLFLOW_RUN_NAME: label.replace(", ", " "),
            "point": label,
            "device_type": "GPU",
        }
        run_id = client.create_run(experiment, tags=tags).info.run_id
        params = [Param(key, str(value)) for key, value in logged_params(config).items()]
        client.log_batch(run_id, metrics=epoch_metrics(index, epochs), params=params)
        client.set_terminated(run_id, "FINISHED")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(runs)))
    return time.perf_counter() - started


def time_cli(uri: str, arguments: list[str]) -> float:
    """One `hpcsweep ARGUMENTS` in a subprocess, as a user runs it; its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", *arguments],
        cwd=ROOT,
        env={**clean_environment(), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"hpcsweep {arguments[0]} failed: {done.stderr[-3000:]}")
    return seconds


def time_fetch(client: mlflow.MlflowClient, runs: int, epochs: int) -> float:
    started = time.perf_counter()
    records, _ = fetch_records(client, None, GRID)
    seconds = time.perf_counter() - started
    read = sum(len(series) for record in records for series in record.history.values())
    if len(records) != runs or read != runs * epochs * len(HISTORIES):
        expected = f"{runs} runs and {runs * epochs * len(HISTORIES)} points"
        raise RuntimeError(f"fetch_records read {len(records)} runs and {read} points, not {expected}")
    return seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="finished point runs in the grid")
    parser.add_argument("--epochs", type=int, default=30, help="epochs each run logged")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each kind; their median is reported")
    parser.add_argument("--threads", type=int, default=16, help="client threads filling the grid")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"{os.cpu_count()} cores, mlflow {mlflow.__version__}, load average {os.getloadavg()[0]:.2f}")
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hpcsweep-report-scale-")))
        servers, _ = postgres_s3_servers(stack, folder, ["proxied"], workers=2)
        server = servers["proxied"]
        server.start()
        client = mlflow.MlflowClient(server.uri)
        seconds = fill(client, args.runs, args.epochs, args.threads)
        print(f"filled {args.runs} runs x {args.epochs} epochs in {seconds:.1f} s ({args.threads} threads)")
        report = str(folder / "report")
        for name, measure in (
            ("hpcsweep report --grid (CLI)", lambda: time_cli(server.uri, ["report", "--grid", GRID, "--out", report])),
            ("hpcsweep status (CLI)", lambda: time_cli(server.uri, ["status", GRID])),
            ("fetch_records", lambda: time_fetch(client, args.runs, args.epochs)),
        ):
            times = [measure() for _ in range(args.repeats)]
            print(
                f"{name}: median {statistics.median(times):.1f} s of {', '.join(f'{t:.1f}' for t in times)}"
                f"   (load {os.getloadavg()[0]:.1f})"
            )


if __name__ == "__main__":
    run_reporting_skips(main)

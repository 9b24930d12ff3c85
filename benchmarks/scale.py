"""A 1000-point grid end to end on the development cluster, timed: launch, status and report.

Run by hand from the project root, as root (it starts the dev cluster), on an idle machine:

    .venv/bin/python benchmarks/scale.py [--points 1000] [--max-parallel 8] [--repeats 3]

1. PostgreSQL + SeaweedFS + `hpcsweep server` with `--workers` (params.yaml's tracking.workers
   by default, 4, as `hpcsweep server` and tracking-server.sbatch run it; the tests' `shared_server`
   has 2), built as that fixture builds them (tracking_server.py's `postgres_s3_servers`), and the
   two-node dev cluster with a real site's MaxArraySize (1001: `HPCSWEEP_SLURM_MAX_ARRAY_SIZE`;
   the tests keep 4, which cuts grids into many arrays on purpose).
   up.sh restarts a cluster that runs with another setting.
2. A temp project with the tests' synthetic data prepared, and a grid of `--points` points
   (optimizer x 5 learning rates x seeds) whose tasks log like a 30-epoch training without
   training (tests/helpers/simulated_point.py, through `hpcsweep grid --template`).
3. `hpcsweep grid --executor slurm`, timed from the command's start to its "points queued" line
   (every array submitted) and to its end (every run created).
4. Once every task has left the queue: each point FINISHED, once, under one parent; then
   `hpcsweep status` and `hpcsweep report --grid`, each the CLI in a subprocess as a user runs
   it, the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import yaml

from hpcsweep.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' services, synthetic data and simulated task

from helpers import simulated_point  # noqa: E402
from helpers.synthetic import VAL_SIZE, write_archive  # noqa: E402
from tracking_server import clean_environment, postgres_s3_servers  # noqa: E402  (beside this file)

LRS = [0.0125, 0.025, 0.05, 0.1, 0.2]
OPTIMIZERS = ["sgd", "adam"]
RESOURCES = {"cpus_per_task": 1, "mem": "500M", "time": "00:20:00", "partition": "debug"}
TINY = {"max_epochs": 30, "warmup_epochs": 0, "batch_size": 60, "base_batch_size": 60, "accelerator": "cpu"}


def start_cluster() -> dict[str, str]:
    environment = {**os.environ, "HPCSWEEP_SLURM_MAX_ARRAY_SIZE": "1001"}
    done = subprocess.run(
        ["bash", str(ROOT / "slurm/cluster/up.sh")], capture_output=True, text=True, env=environment, check=True
    )
    return dict(
        line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if line.startswith("export ")
    )


def make_project(folder: Path, points: int) -> Path:
    """params.yaml with data inside `folder`, the synthetic archive prepared, and the grid file."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(raw_dir=str(folder / "raw"), prepared_dir=str(folder / "prepared"), val_size=VAL_SIZE)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    archive = write_archive(folder / "cifar-10-python.tar.gz")
    for command in (["download", "--archive", str(archive)], ["prepare"]):
        subprocess.run([sys.executable, "-m", "hpcsweep", *command], cwd=folder, check=True, capture_output=True)
    seeds = list(range(points // (len(OPTIMIZERS) * len(LRS))))
    grid = {
        "name": "scale",
        "base": TINY,
        "slurm": RESOURCES,
        "grid": {"optimizer": OPTIMIZERS, "lr": LRS},
        "seeds": seeds,
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    (folder / "simulated.sbatch").write_text(simulated_point.template(sys.executable))
    return folder / "grid.yaml"


def timed_launch(project: Path, environment: dict[str, str], max_parallel: int) -> tuple[float, float, str]:
    """Seconds to the "points queued" line and to the end of `hpcsweep grid`, and what it printed."""
    command = [sys.executable, "-m", "hpcsweep", "grid", "grid.yaml", "--executor", "slurm", "--yes"]
    command += ["--template", "simulated.sbatch", "--max-parallel", str(max_parallel)]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=project, env=environment, stdout=subprocess.PIPE, text=True)
    queued, lines = None, []
    for line in process.stdout:
        lines.append(line)
        if queued is None and "points queued in" in line:
            queued = time.monotonic() - started
    if process.wait() != 0:
        sys.exit(f"hpcsweep grid failed:\n{''.join(lines)[-3000:]}")
    return queued, time.monotonic() - started, "".join(lines)


def wait_for_queue(environment: dict[str, str], timeout_s: float = 3600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        squeue = ["squeue", "-h", "-n", "hpcsweep-scale"]
        queue = subprocess.run(squeue, capture_output=True, text=True, env=environment)
        if queue.returncode == 0 and not queue.stdout.strip():
            return time.monotonic() - started
        time.sleep(5)
    sys.exit("the grid's tasks did not leave the queue within an hour")


def check_runs(uri: str, points: int) -> None:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.grid = 'scale'", max_results=50_000
    )
    children = [run for run in runs if run.data.tags.get("hpcsweep.role") == "point"]
    problems = {
        "points": len(children) == points,
        "all FINISHED": {run.info.status for run in children} == {"FINISHED"},
        "no duplicate": len({run.data.tags["config_hash"] for run in children}) == points,
        "one parent": len({run.data.tags["mlflow.parentRunId"] for run in children}) == 1,
    }
    failed = [name for name, ok in problems.items() if not ok]
    if failed:
        sys.exit(f"the grid's runs are wrong: {', '.join(failed)} ({len(children)} point runs)")


def median_seconds(command: list[str], project: Path, environment: dict[str, str], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.monotonic()
        subprocess.run(command, cwd=project, env=environment, check=True, capture_output=True)
        seconds.append(time.monotonic() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="a multiple of 10")
    parser.add_argument("--max-parallel", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=load_config(ROOT / "params.yaml").tracking.workers)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f} on {os.cpu_count()} CPUs; server workers: {args.workers}", flush=True)
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        folder = Path(temporary)
        servers, _ = postgres_s3_servers(stack, folder, ["proxied"], workers=args.workers)
        server = servers["proxied"]
        server.start()
        environment = {**clean_environment(), **start_cluster(), "MLFLOW_TRACKING_URI": server.uri}
        project = folder / "project"
        project.mkdir()
        make_project(project, args.points)
        queued, launched, printed = timed_launch(project, environment, args.max_parallel)
        print(printed.strip())
        print(f"launch: every array queued {queued:.1f} s after the command started; done in {launched:.1f} s")
        print(f"tasks: the queue emptied {wait_for_queue(environment):.0f} s after the launch", flush=True)
        check_runs(server.uri, args.points)
        python = [sys.executable, "-m", "hpcsweep"]
        status = median_seconds([*python, "status", "scale"], project, environment, args.repeats)
        report = [*python, "report", "--grid", "scale", "--out", str(folder / "report")]
        report_s = median_seconds(report, project, environment, args.repeats)
        summary = json.loads((folder / "report" / "summary.json").read_text())
        print(f"status: {status:.2f} s; report: {report_s:.1f} s (medians of {args.repeats})")
        print(f"report: best {summary['best_configuration']}, {summary['finished_runs']} finished runs")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

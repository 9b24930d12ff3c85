"""What logging to the tracking server costs: server throughput per core, and training's share.

Run by hand from the project root, on an otherwise idle machine (it prints the load average):

    .venv/bin/python benchmarks/tracking_server.py [--clients 1 32 128] [--repeats 2] [--prepared-dir DIR]

1. Logging throughput and latency, per artifact path. PostgreSQL + SeaweedFS, assembled exactly
   as the tests' `shared_server` fixture does, with two `hpcsweep server`s on them (`--workers`,
   default 2) side by side: `proxied` (artifacts through the server, `--serve-artifacts`, the
   default) and `direct` (`--no-serve-artifacts`: clients upload straight to S3 with their own
   keys; left out, with a note, where the CLI lacks the flag); `--servers sqlite` adds one on a
   SQLite file. For each count of concurrent clients (`--clients`, default 1, 32, 128),
   tests/helpers/logging_load.py runs as a subprocess against each (a fresh experiment each time,
   `--no-retries` so that a failed call is counted, not hidden by MLflow's retries): every client
   creates a run, logs its params, one log_batch per epoch, one checkpoint-sized artifact
   (`--artifact-bytes`, default 4 MiB) and ends its run. Reported per cell, as the median of
   `--repeats` loads: requests/s (HTTP requests the clients sent the server / the load's wall
   time, which includes forking the clients and creating their runs; direct S3 uploads are not
   server requests), metric points/s (points accepted / wall time), the server's CPU use (user +
   system time of its processes over the load, in cores kept busy) and both rates per core (per
   second of the server's CPU time: what one fully busy core of a server node does, whatever
   else shares this machine), p50 and p99 latency of an epoch's log_batch call over all clients
   (the params call, each client's first, is left out), and the failed calls. One server runs
   at a time (two would share PostgreSQL's 100 connections), through every client count; the
   repeats alternate which server goes first, so that a change in the machine's load falls on all.
2. The share of a training's time spent in logging: resnet20 trained in this process by
   `hpcsweep.training.train.train(config)` against the proxied PostgreSQL + S3 server, on the real CIFAR-10 (built
   here from ../shared/data unless `--prepared-dir` is given), with the spool (as training always
   runs against a server) and with it switched off (`hpcsweep.tracking.store.spooled_writes` replaced by
   a null context, so every write goes over HTTP while training waits), `--train-repeats` times
   each, alternating which goes first; medians are reported. Timers wrap,
   in this benchmark only, every place the training thread can spend time logging, and count
   only calls made on the main thread, each call once (a timed call inside another is not
   counted again): the stores' writes (RestStore's log_batch, log_metric, log_param, set_tag,
   update_run_info; SpoolingStore's, and its `spool_record`), artifact uploads (`log_artifact` of the
   spooling and the HTTP artifact repositories), and the waits of MLflow's autologging client
   for its thread pool (`MlflowAutologgingQueueingClient.flush`). Reported apart: the server
   requests the main thread makes outside those (`RestStore._call_endpoint`: finding the
   experiment, creating and reading the run), and the wait at the end for the spool to be sent
   (`Flusher.close`). Each share is seconds / the wall time of the whole `train(config)` call.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' real services: postgres, seaweedfs, HpcsweepServer

from helpers.project import SHARED_DATA  # noqa: E402
from helpers.services import (  # noqa: E402
    ARTIFACT_BUCKET,
    S3_KEYS,
    HpcsweepServer,
    postgres,
    seaweedfs,
    server_environment,
)

CLIENT_COUNTS = (1, 32, 128)
# the servers part 1 can load: PostgreSQL + SeaweedFS with artifacts through the server or straight
# to S3, and the SQLite server issue 5 compared it with
SERVERS = {
    "proxied": "PostgreSQL + S3, artifacts through the server",
    "direct": "PostgreSQL + S3, artifacts straight to S3",
    "sqlite": "SQLite + a folder, artifacts through the server",
}
TRAIN_OVERRIDES = ["limit_train_samples=5000", "max_epochs=3", "warmup_epochs=0", "accelerator=cpu"]


# ---------------------------------------------------------------------------------------------
# services


def clean_environment() -> dict[str, str]:
    """This process's environment without MLflow settings that would change what is measured."""
    return {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}


def has_no_serve_artifacts() -> bool:
    """Whether this checkout's `hpcsweep server` can hand out S3 URIs (--no-serve-artifacts)."""
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "server", "--help"],
        capture_output=True,
        text=True,
        env={**clean_environment(), "PYTHONPATH": str(ROOT / "src")},
    )
    return "--no-serve-artifacts" in done.stdout


def running_alone(servers: dict[str, HpcsweepServer], name: str) -> HpcsweepServer:
    """Start server `name` (if it is not running), after stopping the others: two servers on one
    PostgreSQL could together open more connections than its max_connections (100)."""
    for other, server in servers.items():
        if other != name:
            server.stop()
    if servers[name].process is None:
        servers[name].start()
    return servers[name]


def postgres_s3_servers(
    stack: contextlib.ExitStack, folder: Path, names: list[str], workers: int
) -> tuple[dict[str, HpcsweepServer], dict[str, str]]:
    """PostgreSQL + SeaweedFS, as the tests' shared_server fixture builds them, and on them one
    `hpcsweep server` (not started yet) per artifact path in `names` (proxied, direct); and the
    S3 environment a client needs to upload straight to S3."""
    endpoint = stack.enter_context(
        seaweedfs(folder / "s3", S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"], ARTIFACT_BUCKET)
    )
    s3 = {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    database, environment = server_environment(s3, stack.enter_context(postgres(folder / "postgres")))
    servers = {}
    for name in names:
        server_folder = folder / f"server-{name}"
        server_folder.mkdir(parents=True)
        shutil.copy2(ROOT / "params.yaml", server_folder / "params.yaml")
        arguments = ["--backend-store-uri", database, "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/artifacts"]
        if name == "direct":
            arguments.append("--no-serve-artifacts")
        # HpcsweepServer passes --workers 2 first: the last one given wins
        servers[name] = HpcsweepServer(server_folder, [*arguments, "--workers", str(workers)], environment)
        stack.callback(servers[name].stop)
    return servers, s3


def sqlite_server(stack: contextlib.ExitStack, folder: Path, workers: int) -> HpcsweepServer:
    server_folder = folder / "server-sqlite"
    server_folder.mkdir(parents=True)
    shutil.copy2(ROOT / "params.yaml", server_folder / "params.yaml")
    arguments = [
        "--backend-store-uri",
        f"sqlite:///{server_folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(server_folder / "artifacts"),
        "--workers",
        str(workers),
    ]
    server = HpcsweepServer(server_folder, arguments, {**clean_environment(), "PYTHONPATH": str(ROOT / "src")})
    stack.callback(server.stop)
    return server


def cpu_seconds(session: int) -> float:
    """User + system CPU time of every live process in `session` (a server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            if int(fields[3]) == session:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# 1. throughput and latency


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def one_load(server: HpcsweepServer, folder: Path, clients: int, args: argparse.Namespace, s3: dict) -> dict:
    """One run of tests/helpers/logging_load.py against `server`; its figures."""
    experiment = f"bench-{clients}-{uuid.uuid4().hex[:8]}"
    scratch = folder / experiment
    scratch.mkdir(parents=True)
    out = scratch / "result.json"
    command = [
        sys.executable,
        str(ROOT / "tests" / "helpers" / "logging_load.py"),
        server.uri,
        *("--clients", str(clients), "--epochs", str(args.epochs), "--metrics", str(args.metrics)),
        *("--params", str(args.params), "--artifact-bytes", str(args.artifact_bytes)),
        *("--experiment", experiment, "--scratch", str(scratch), "--out", str(out), "--no-retries"),
    ]
    server_cpu_before = cpu_seconds(server.process.pid)  # the server runs in a session of its own
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**clean_environment(), **s3})
    server_cpu_s = cpu_seconds(server.process.pid) - server_cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"logging_load.py failed against {server.uri}: {done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    epoch_latencies, failed, aborted, accepted_calls, requests = [], 0, 0, 0, 0
    for outcome in result["clients"]:
        epoch_errors = sum(1 for error in outcome["errors"] if error.startswith("epoch "))
        epoch_latencies += outcome["latencies_s"][1:]  # [0] is the params call
        accepted_calls += len(outcome["latencies_s"][1:]) - epoch_errors
        failed += len(outcome["errors"])
        aborted += "traceback" in outcome  # create_run, params, artifact or set_terminated failed
        requests += outcome["requests"]
    shutil.rmtree(scratch, ignore_errors=True)
    wall_s = result["wall_s"]
    return {
        "wall_s": wall_s,
        "requests_per_s": requests / wall_s,
        "points_per_s": accepted_calls * args.metrics / wall_s,
        "server_cores": server_cpu_s / wall_s,  # how many cores the server kept busy on average
        "p50_ms": 1000 * percentile(epoch_latencies, 0.5) if epoch_latencies else float("nan"),
        "p99_ms": 1000 * percentile(epoch_latencies, 0.99) if epoch_latencies else float("nan"),
        "failed": failed,
        "aborted": aborted,
        "first_errors": [e for o in result["clients"] for e in o["errors"]][:2],
    }


def measure_logging(servers: dict[str, HpcsweepServer], folder: Path, args: argparse.Namespace, s3: dict) -> dict:
    cells: dict[tuple[str, int], list[dict]] = collections.defaultdict(list)
    for repeat in range(args.repeats):
        for name in args.servers if repeat % 2 == 0 else reversed(args.servers):  # alternate who goes first
            server = running_alone(servers, name)
            for clients in args.clients:
                figures = one_load(server, folder, clients, args, s3)
                cells[name, clients].append(figures)
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {name:<8} {clients:>3} clients: "
                    f"{figures['requests_per_s']:6,.0f} requests/s {figures['points_per_s']:7,.0f} points/s "
                    f"in {figures['wall_s']:5.1f} s (server {figures['server_cores']:.2f} cores), log_batch "
                    f"p50 {figures['p50_ms']:6.1f} ms p99 {figures['p99_ms']:7.1f} ms, "
                    f"{figures['failed']} failed{' ' + repr(figures['first_errors']) if figures['failed'] else ''}"
                    f"   (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    return cells


def report_logging(cells: dict, args: argparse.Namespace) -> None:
    print(
        f"\nLogging throughput, medians of {args.repeats} loads ({args.epochs} epochs x {args.metrics} metrics, "
        f"{args.params} params, one artifact of {args.artifact_bytes:,} bytes per client; every server "
        f"{args.workers} workers on this {os.cpu_count()}-core machine, which it shares with the clients and "
        "its database and S3). Per core = per second of the server's own CPU time (its processes' user + "
        "system time over the load), what one fully busy core of a server node would do:"
    )
    print(
        "| server | clients | requests/s | metric points/s | server cores busy | requests/s per core | "
        "points/s per core | log_batch p50 | log_batch p99 | failed calls (each load) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for clients in args.clients:
        for name in args.servers:
            runs = cells[name, clients]

            def median(key: str, runs=runs) -> float:
                return statistics.median(run[key] for run in runs)

            def per_core(key: str, runs=runs) -> float:
                return statistics.median(run[key] / max(run["server_cores"], 1e-9) for run in runs)

            failed = ", ".join(str(run["failed"]) for run in runs)
            aborted = sum(run["aborted"] for run in runs)
            print(
                f"| {SERVERS[name]} | {clients} | {median('requests_per_s'):,.0f} | {median('points_per_s'):,.0f} | "
                f"{median('server_cores'):.2f} | {per_core('requests_per_s'):,.0f} | {per_core('points_per_s'):,.0f} | "
                f"{median('p50_ms'):.1f} ms | {median('p99_ms'):.1f} ms | {failed}"
                f"{f' ({aborted} clients aborted)' if aborted else ''} |"
            )


# ---------------------------------------------------------------------------------------------
# 2. the share of training time spent logging


class MainThreadTimers:
    """Wraps methods so that the main thread's time inside them adds up per category. Only the
    outermost timed call counts: log_batch inside log_metric, or a request inside log_batch, is
    already inside its caller's time."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()
        self.inside = False  # only the main thread reads or sets it
        self.undo: list[tuple[type, str, object]] = []

    def wrap(self, owner: type, name: str, category: str) -> None:
        original = owner.__dict__[name]  # KeyError if MLflow or hpcsweep moved it: better than timing nothing
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if timers.inside or threading.current_thread() is not threading.main_thread():
                return original(*args, **kwargs)
            timers.inside = True
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[category] += time.perf_counter() - started
                timers.calls[category] += 1
                timers.inside = False

        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()


def wrap_logging(timers: MainThreadTimers) -> None:
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.autologging_utils.client import MlflowAutologgingQueueingClient

    from hpcsweep.tracking.sender import Flusher
    from hpcsweep.tracking.store import ActiveSpool, SpoolingArtifactRepository, SpoolingStore

    writes = ("log_batch", "log_metric", "log_param", "set_tag", "update_run_info")
    for name in writes:
        timers.wrap(RestStore, name, "log calls")
        timers.wrap(SpoolingStore, name, "log calls")
    # the one method every spooled write ends in
    timers.wrap(ActiveSpool, "append", "log calls")
    timers.wrap(SpoolingArtifactRepository, "log_artifact", "log calls")
    timers.wrap(HttpArtifactRepository, "log_artifact", "log calls")
    timers.wrap(MlflowAutologgingQueueingClient, "flush", "log calls")
    timers.wrap(RestStore, "_call_endpoint", "other requests")
    timers.wrap(Flusher, "close", "final flush")


def prepare_data(folder: Path) -> Path:
    """The real CIFAR-10, built from ../shared/data and prepared by the CLI in a temp project."""
    archive = folder / "cifar-10-python.tar.gz"
    subprocess.run(
        [
            sys.executable,
            str(SHARED_DATA / "make_cifar10_archive.py"),
            str(SHARED_DATA / "cifar10-jpeg.tar.gz"),
            str(archive),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    import yaml

    project = folder / "data-project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(raw_dir=str(project / "data/raw"), prepared_dir=str(project / "data/prepared"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["download", "--archive", str(archive)], ["prepare"]):
        subprocess.run(
            [sys.executable, "-m", "hpcsweep", *command],
            cwd=project,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**clean_environment(), "PYTHONPATH": str(ROOT / "src")},
        )
    return project / "data/prepared"


def one_training(uri: str, prepared: Path, folder: Path, spool: bool, overrides: list[str]) -> dict:
    import mlflow

    from hpcsweep.config import load_config
    from hpcsweep.tracking import store
    from hpcsweep.tracking.store import SUPPRESS_URL
    from hpcsweep.training.train import train

    mode = "spool" if spool else "no-spool"
    config = load_config(
        ROOT / "params.yaml",
        [
            *overrides,
            f"data.prepared_dir={prepared}",
            f"tracking.uri={uri}",
            f"tracking.experiment=bench-train-{mode}-{uuid.uuid4().hex[:8]}",
            f"tracking.checkpoint_dir={folder / ('checkpoints-' + mode)}",
        ],
    )
    timers = MainThreadTimers()
    original_spooled_writes = store.spooled_writes
    suppress_url = os.environ.get(SUPPRESS_URL)
    if not spool:
        store.spooled_writes = lambda uri, run_dir, flush_timeout_s: contextlib.nullcontext(uri)
        # as the spool does: else end_run reads the run back to print its URL, a request the spool saves
        os.environ[SUPPRESS_URL] = "true"
    wrap_logging(timers)
    try:
        started = time.perf_counter()
        result = train(config)
        total_s = time.perf_counter() - started
    finally:
        timers.restore()
        store.spooled_writes = original_spooled_writes
        if suppress_url is None:
            os.environ.pop(SUPPRESS_URL, None)
        else:
            os.environ[SUPPRESS_URL] = suppress_url
    run = mlflow.MlflowClient(uri).get_run(result.run_id)  # everything arrived, in both modes
    return {
        "mode": mode,
        "total_s": total_s,
        "fit_s": result.total_time_s,
        "status": result.status,
        "server_status": run.info.status,
        "server_metrics": len(run.data.metrics),
        "images_per_s": run.data.metrics.get("train/images_per_s"),
        "seconds": dict(timers.seconds),
        "calls": dict(timers.calls),
    }


def measure_training(uri: str, prepared: Path, folder: Path, args: argparse.Namespace) -> list[dict]:
    runs = []
    for repeat in range(args.train_repeats):
        for spool in (True, False) if repeat % 2 == 0 else (False, True):  # alternate who goes first
            figures = one_training(uri, prepared, folder, spool, args.train_overrides)
            runs.append(figures)
            seconds = figures["seconds"]
            print(
                f"  {figures['mode']:<8} train() {figures['total_s']:6.1f} s (fit {figures['fit_s']:.1f} s, "
                f"{figures['images_per_s'] or 0:.0f} images/s); main thread in log calls "
                f"{seconds.get('log calls', 0):.3f} s ({figures['calls'].get('log calls', 0)} calls), "
                f"other requests {seconds.get('other requests', 0):.3f} s, final flush "
                f"{seconds.get('final flush', 0):.3f} s; run on the server: {figures['server_status']}, "
                f"{figures['server_metrics']} metrics   (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return runs


def report_training(runs: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nShare of train() wall time on the main thread, resnet20, {' '.join(args.train_overrides)} "
        f"(median of {args.train_repeats} per mode):"
    )
    print("| mode | train() wall | log calls | other server requests | final spool flush | all three |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode in ("spool", "no-spool"):
        mine = [run for run in runs if run["mode"] == mode]
        total = statistics.median(run["total_s"] for run in mine)

        def cell(*categories: str) -> str:
            share = statistics.median(
                sum(run["seconds"].get(c, 0.0) for c in categories) / run["total_s"] for run in mine
            )
            seconds = statistics.median(sum(run["seconds"].get(c, 0.0) for c in categories) for run in mine)
            return f"{seconds:.2f} s = {100 * share:.2f}%"

        print(
            f"| {mode} | {total:.1f} s | {cell('log calls')} | {cell('other requests')} | "
            f"{cell('final flush')} | {cell('log calls', 'other requests', 'final flush')} |"
        )


# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="loads per cell of part 1 (median reported)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENT_COUNTS), help="concurrent clients")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=["proxied", "direct"],
        help="servers part 1 loads: " + "; ".join(f"{name}: {what}" for name, what in SERVERS.items()),
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every server")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--metrics", type=int, default=6)
    parser.add_argument("--params", type=int, default=5)
    parser.add_argument(
        "--artifact-bytes", type=int, default=4 << 20, help="each client's one artifact (default: a checkpoint's 4 MiB)"
    )
    parser.add_argument(
        "--prepared-dir",
        type=Path,
        help="a prepared CIFAR-10 folder (train.pt, test.pt, stats.json); default: build one "
        "from ../shared/data in a temp folder (about 45 s)",
    )
    parser.add_argument(
        "--train-repeats", type=int, default=2, help="trainings per mode in part 2, alternating which mode goes first"
    )
    parser.add_argument(
        "-s",
        "--set",
        dest="train_overrides",
        action="append",
        help=f"training overrides for part 2, replacing the default {' '.join(TRAIN_OVERRIDES)}",
    )
    parser.add_argument("--skip-logging", action="store_true", help="only part 2")
    parser.add_argument("--skip-training", action="store_true", help="only part 1")
    args = parser.parse_args()
    args.train_overrides = args.train_overrides or TRAIN_OVERRIDES
    args.servers = list(dict.fromkeys(args.servers)) if not args.skip_logging else []
    if "direct" in args.servers and not has_no_serve_artifacts():
        print("`hpcsweep server` has no --no-serve-artifacts in this checkout: the direct-to-S3 server is left out")
        args.servers.remove("direct")
    return args


def main() -> None:
    args = parse_args()
    # Lightning's per-fit banner and MLflow's migrations would bury the figures
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")  # not under SLURM here
    import mlflow
    import torch

    started = time.perf_counter()
    print(
        f"date {datetime.datetime.now().isoformat(timespec='minutes')}, {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}, mlflow {mlflow.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.2f}"
    )
    if os.getloadavg()[0] > 0.5:
        print("WARNING: the CPUs are busy before the benchmark starts; the figures will be low and noisy")
    if not args.skip_training:  # fail now, not after part 1, if a timed method has moved
        timers = MainThreadTimers()
        wrap_logging(timers)
        timers.restore()
    with tempfile.TemporaryDirectory(prefix="tracking-bench-") as temporary, contextlib.ExitStack() as stack:
        folder = Path(temporary)
        prepared = None
        if not args.skip_training:
            prepared = args.prepared_dir or prepare_data(folder)
            print(f"data: {prepared}")
        # part 2 trains against the server as it runs today: proxied artifacts
        postgres_names = [name for name in args.servers if name != "sqlite"]
        if not args.skip_training and "proxied" not in postgres_names:
            postgres_names.append("proxied")
        servers, s3 = postgres_s3_servers(stack, folder, postgres_names, args.workers) if postgres_names else ({}, {})
        if "sqlite" in args.servers:
            servers["sqlite"] = sqlite_server(stack, folder, args.workers)
        print(f"services up after {time.perf_counter() - started:.0f} s", flush=True)
        if not args.skip_logging:
            cells = measure_logging(servers, folder, args, s3)
        if not args.skip_training:
            runs = measure_training(running_alone(servers, "proxied").uri, prepared, folder, args)
        if not args.skip_logging:
            report_logging(cells, args)
        if not args.skip_training:
            report_training(runs, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def run_reporting_skips(main) -> None:
    """Run a benchmark's main; a service that cannot start (the tests' helpers raise pytest's
    Skipped) ends it with one line instead of a traceback."""
    try:
        main()
    except BaseException as error:
        if type(error).__name__ == "Skipped":
            sys.exit(f"a service did not start: {error}")
        raise


if __name__ == "__main__":
    run_reporting_skips(main)

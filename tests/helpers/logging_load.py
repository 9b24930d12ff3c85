"""Many client processes logging to one tracking server at once: the load test and the benchmark.

Run as a script so that the clients fork from a small, clean process that has imported MLflow
once (32 fresh interpreters importing MLflow would cost more than the load itself):

    python tests/helpers/logging_load.py URI --clients 32 --epochs 50 --metrics 6 --params 5 \
        --artifact-bytes 1048576 --experiment NAME --out result.json

Each client opens a run, logs its params, then one log_metrics call per epoch (a training's
pattern) and finally uploads an artifact of known bytes; every call is timed. The JSON result
holds per client its run id, errors, call latencies and the number of HTTP requests it sent the
tracking server, and the wall time of the whole load. Against `hpcsweep server
--no-serve-artifacts` the artifact goes straight to S3 (the clients need AWS_* keys and
MLFLOW_S3_ENDPOINT_URL in their environment), and those uploads are not counted as requests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
import traceback
from pathlib import Path


def artifact_bytes(client: int, size: int) -> bytes:
    """Different, reproducible bytes per client, so a mixed-up upload cannot pass."""
    seed = hashlib.sha256(str(client).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def metric_value(client: int, epoch: int, metric: int) -> float:
    return client + epoch / 100 + metric / 10000


def count_requests(outcome: dict) -> None:
    """Count in `outcome["requests"]` every HTTP request this process sends through `requests`:
    MLflow's REST calls and uploads through the server use it, boto3's S3 uploads do not."""
    import requests

    send = requests.Session.send

    def counted(session, request, **kwargs):
        outcome["requests"] += 1
        return send(session, request, **kwargs)

    requests.Session.send = counted


def one_client(args: argparse.Namespace, client: int, experiment_id: str, results) -> None:
    import mlflow

    mlflow_client = mlflow.MlflowClient(args.uri)
    outcome = {"client": client, "run_id": None, "errors": [], "latencies_s": [], "requests": 0}
    count_requests(outcome)
    try:
        run = mlflow_client.create_run(experiment_id, run_name=f"client-{client}")
        run_id = outcome["run_id"] = run.info.run_id
        started = time.perf_counter()
        mlflow_client.log_batch(
            run_id, params=[mlflow.entities.Param(f"param_{i}", str(client * 10 + i)) for i in range(args.params)]
        )
        outcome["latencies_s"].append(time.perf_counter() - started)
        for epoch in range(args.epochs):
            metrics = [
                mlflow.entities.Metric(f"metric_{m}", metric_value(client, epoch, m), int(time.time() * 1000), epoch)
                for m in range(args.metrics)
            ]
            started = time.perf_counter()
            try:
                mlflow_client.log_batch(run_id, metrics=metrics)
            except Exception as error:  # recorded: the SQLite comparison is about these
                outcome["errors"].append(f"epoch {epoch}: {str(error).splitlines()[0][:300]}")
            outcome["latencies_s"].append(time.perf_counter() - started)
        if args.artifact_bytes:
            path = Path(args.scratch) / f"client-{client}.bin"
            path.write_bytes(artifact_bytes(client, args.artifact_bytes))
            mlflow_client.log_artifact(run_id, str(path))
        mlflow_client.set_terminated(run_id)
    except Exception as error:
        outcome["errors"].append(f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
        outcome["traceback"] = traceback.format_exc()[-2000:]
    results.put(outcome)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=6)
    parser.add_argument("--params", type=int, default=5)
    parser.add_argument("--artifact-bytes", type=int, default=1 << 20)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--no-retries",
        action="store_true",
        help="Fail a call at the first error instead of MLflow's retries with back-off.",
    )
    args = parser.parse_args()
    if args.no_retries:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"

    import mlflow

    # created once, before the clients: concurrent set_experiment calls race (see DESIGN.md)
    experiment_id = mlflow.MlflowClient(args.uri).create_experiment(args.experiment)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    started = time.perf_counter()
    clients = [
        context.Process(target=one_client, args=(args, client, experiment_id, results))
        for client in range(args.clients)
    ]
    for process in clients:
        process.start()
    outcomes = [results.get() for _ in clients]
    for process in clients:
        process.join()
    wall_s = time.perf_counter() - started
    Path(args.out).write_text(
        json.dumps(
            {"experiment_id": experiment_id, "wall_s": wall_s, "clients": sorted(outcomes, key=lambda o: o["client"])}
        )
    )


if __name__ == "__main__":
    main()

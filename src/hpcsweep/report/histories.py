"""The per-epoch metric histories of many runs, read in a few requests instead of one per run and metric.

A report of 1000 runs needs 6 histories each: read one by one, that is 6000 round trips to the
tracking server. MLflow's server has the endpoint its UI draws charts with,
`GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`: one metric of up to 100 runs per request,
all in one database query. It cuts every answer at 25,000 points (its `max_results`, counted
over all the runs asked), ordered by run and then time: so a full answer may have lost the end
of its last run and every run after it. Those runs are asked again, in the next request; a run
whose one metric alone fills an answer is read on its own, through the client, which pages.
Nothing is ever dropped silently, as long as the server's cut is the 25,000 asked for (MLflow's
since the endpoint exists; tests/test_report_bulk.py checks it against the pinned server).
The requests (one per metric and 100 runs: 60 for 1000 runs) go READERS at a time: most of a
request's time is the server's, and it has several workers.

A store that is not a server (a `sqlite:///` file, a folder: tests and `make run`) is on this
machine and fast: it is read through the client, one history at a time.

A resumed epoch is logged twice (a requeued job redoes the epoch it stopped in): per step, the
measurement with the latest timestamp counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import mlflow
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request_safe

BULK_HISTORY = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
RUNS_PER_REQUEST = 100  # MLflow's MAX_RUN_IDS_PER_REQUEST: it refuses more
POINTS_PER_REQUEST = 25_000  # MLflow's MAX_HISTORY_RESULTS: it cuts an answer at this many points
REQUEST_TIMEOUT_S = 120
READERS = 4  # requests at a time

Histories = dict[str, dict[str, list[float]]]  # run id -> metric name -> one value per epoch


class Measurement(NamedTuple):
    """One logged value, as much of an MLflow `Metric` as a history needs (and lighter to make)."""

    step: int
    timestamp: int
    value: float


def epoch_series(measurements: Iterable) -> list[float]:
    """One value per step, in step order; a step logged twice keeps the later one (by timestamp)."""
    by_step: dict[int, float] = {}
    for measurement in sorted(measurements, key=lambda m: (m.step, m.timestamp)):
        by_step[measurement.step] = measurement.value  # a resumed epoch logged twice: the last one counts
    return [by_step[step] for step in sorted(by_step)]


def epoch_histories(client: mlflow.MlflowClient, run_ids: list[str], names: Iterable[str]) -> Histories:
    """The `names` histories of every run in `run_ids`, per epoch (empty for a metric a run lacks)."""
    names = list(names)
    measured: dict[str, dict[str, list]] = {name: {} for name in names}
    if served(client.tracking_uri):
        chunks = [run_ids[start : start + RUNS_PER_REQUEST] for start in range(0, len(run_ids), RUNS_PER_REQUEST)]
        jobs = list(itertools.product(names, chunks))
        with ThreadPoolExecutor(READERS) as pool:
            for (name, _), part in zip(jobs, pool.map(lambda job: bulk_history(client, job[1], job[0]), jobs)):
                measured[name] |= part
    else:
        for name in names:
            measured[name] = {run_id: client.get_metric_history(run_id, name) for run_id in run_ids}
    return {run_id: {name: epoch_series(measured[name][run_id]) for name in names} for run_id in run_ids}


def served(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bulk_history(client: mlflow.MlflowClient, run_ids: list[str], name: str) -> dict[str, list]:
    """Every measurement of metric `name` of each run, by run id, in as few requests as MLflow's
    limits allow (see the module's docstring for how a cut answer is completed)."""
    creds = get_default_host_creds(client.tracking_uri)
    measured: dict[str, list] = {}
    pending = list(run_ids)
    while pending:
        asked = pending[:RUNS_PER_REQUEST]
        points = request_history(creds, asked, name)
        by_run: dict[str, list] = {run_id: [] for run_id in asked}
        for point in points:
            by_run[point["run_id"]].append(Measurement(point["step"], point["timestamp"], point["value"]))
        if len(points) < POINTS_PER_REQUEST:
            complete = asked
        else:  # cut: the runs before the last one answered are whole, the rest are asked again
            last = points[-1]["run_id"]
            complete = [run_id for run_id in by_run if by_run[run_id] and run_id != last]
            if not complete:  # one run's history alone fills an answer: the client pages through it
                by_run[last], complete = client.get_metric_history(last, name), [last]
        measured |= {run_id: by_run[run_id] for run_id in complete}
        pending = [run_id for run_id in pending if run_id not in measured]
    return measured


def request_history(creds, run_ids: list[str], name: str) -> list[dict]:
    """One get-history-bulk request: metric `name` of `run_ids` (at most RUNS_PER_REQUEST)."""
    response = http_request_safe(
        creds,
        BULK_HISTORY,
        "GET",
        timeout=REQUEST_TIMEOUT_S,
        params={"run_id": run_ids, "metric_key": name, "max_results": POINTS_PER_REQUEST},
    )
    return response.json().get("metrics", [])

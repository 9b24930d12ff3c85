"""Reading runs from a tracking server over MLflow's REST API, without importing mlflow.

`import mlflow` alone takes about 4 s on the 2-core development machine: longer than `hpcsweep
status` may take for a whole 1000-point grid (issue 16). Status only reads, so for a server it
asks MLflow's documented REST endpoints (`experiments/search`, `runs/search`) itself, with the
credentials and TLS settings MLflow's own client takes from the environment. What it returns has
the shape of MLflow's `Run` where status reads one (`run.info.run_id`, `run.info.status`,
`run.info.start_time`, `run.data.tags`, `run.data.metrics`), so the same predicates read both.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hpcsweep.errors import UserError
from hpcsweep.tracking.credentials import redact, redact_text, without_login

API = "/api/2.0/mlflow"
PAGE = 50_000  # the most runs/search gives in one answer
TIMEOUT_S = 60
TRUE = ("true", "1", "yes")
ORDERS = ("attributes.start_time ASC", "attributes.start_time DESC")  # the first run, the last


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str
    start_time: int


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each
    params: dict[str, str]


@dataclass(frozen=True)
class RunView:
    """A run as runs/search answers it, in the shape of MLflow's `Run`."""

    info: RunInfo
    data: RunData

    @classmethod
    def from_json(cls, run: dict) -> RunView:
        info, data = run["info"], run.get("data", {})

        def entries(key: str) -> dict:
            return {entry["key"]: entry.get("value") for entry in data.get(key, [])}

        metrics = {key: float(value) for key, value in entries("metrics").items()}
        return cls(
            RunInfo(info["run_id"], info["status"], int(info.get("start_time", 0))),
            RunData(entries("tags"), metrics, entries("params")),
        )


def headers(login: str | None) -> dict[str, str]:
    """MLflow's client's login: MLFLOW_TRACKING_TOKEN, else MLFLOW_TRACKING_USERNAME and _PASSWORD,
    else the URI's own."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        return {"Authorization": f"Bearer {token}"}
    login = f"{user}:{password}" if user and password else login
    return {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()} if login else {}


def tls_context() -> ssl.SSLContext:
    """MLflow's client's TLS: MLFLOW_TRACKING_SERVER_CERT_PATH (a CA bundle to trust),
    MLFLOW_TRACKING_CLIENT_CERT_PATH (a certificate with its key), MLFLOW_TRACKING_INSECURE_TLS."""
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in TRUE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"])
    return context


def post(uri: str, endpoint: str, body: dict) -> dict:
    """One REST call; a refusal or an unreachable server is a one-line UserError naming both."""
    location, login = without_login(uri)
    request = urllib.request.Request(
        f"{location.rstrip('/')}{API}/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers(login)},
    )
    context = tls_context() if uri.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        detail = redact_text(error.read().decode(errors="replace")[:300])
        raise UserError(f"tracking server {redact(uri)} answered {error.code} to {endpoint}: {detail}") from None
    except OSError as error:
        raise UserError(f"tracking server {redact(uri)} does not answer ({redact_text(str(error))})") from None


def pages(uri: str, endpoint: str, body: dict, key: str) -> list[dict]:
    """Every entry under `key` of a paged search, following next_page_token."""
    entries, token = [], None
    while True:
        answer = post(uri, endpoint, {**body, **({"page_token": token} if token else {})})
        entries += answer.get(key, [])
        token = answer.get("next_page_token")
        if not token:
            return entries


def experiment_ids(uri: str) -> list[str]:
    """The server's active experiments."""
    experiments = pages(uri, "experiments/search", {"max_results": 1000}, "experiments")
    return [experiment["experiment_id"] for experiment in experiments]


def start_times(uri: str, experiments: list[str], query: str) -> tuple[int, int] | None:
    """The start times of the first and the last run that match `query`; None where none does."""
    body = {"experiment_ids": experiments, "filter": query, "max_results": 1}
    with ThreadPoolExecutor(2) as pool:  # both at once
        ends = list(pool.map(lambda order: post(uri, "runs/search", {**body, "order_by": [order]}), ORDERS))
    if not ends[0].get("runs"):
        return None
    first, last = (RunView.from_json(end["runs"][0]).info.start_time for end in ends)
    return first, last


def search_runs(uri: str, experiments: list[str], query: str) -> list[RunView]:
    """The active runs of `experiments` that match `query` (MLflow's search syntax)."""
    body = {"experiment_ids": experiments, "filter": query, "max_results": PAGE}
    return [RunView.from_json(run) for run in pages(uri, "runs/search", body, "runs")]

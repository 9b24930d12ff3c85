"""Sends a spool's records to the tracking server, in order, and says when the server is away.

Each request is made once, with a short timeout (MLflow's own client would retry for minutes
inside one call); retrying with back-off is the caller's choice: the background `Flusher`
while training runs, a person running `hpcsweep sync` after it. Consecutive log_batch records
are merged into requests within MLflow's batch limits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response

from hpcsweep.tracking.spool import Spool

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
UPDATE_RUN = "/api/2.0/mlflow/runs/update"
MAX_METRICS, MAX_PARAMS_AND_TAGS = 1000, 100  # MLflow's limits for one log_batch
REQUEST_TIMEOUT_S = 10
# 4xx answers that a retry could turn into a success; any other 4xx refuses the record for good
RETRYABLE_CLIENT_ERRORS = (401, 403, 408, 429)

log = logging.getLogger(__name__)


class ServerAway(Exception):
    """The server did not answer, or answered that it cannot take the request now."""


def send_unsent(spool: Spool) -> None:
    """Send every unsent record of a claimed spool, in order. Raises ServerAway."""
    creds = get_default_host_creds(spool.uri)
    one_by_one_until = 0  # a refused batch is sent again record by record, to set aside only the bad one
    while records := spool.unsent():
        count = 1 if spool.sent < one_by_one_until else records_in_next_request(records)
        try:
            send(creds, spool.uri, records[:count])
        except RestException as error:
            if not refused_for_good(error):
                raise ServerAway(str(error)) from None
            if count > 1:
                one_by_one_until = spool.sent + count
                continue
            spool.reject(records[0], str(error))
        except MlflowException as error:  # no answer at all: connection refused, timeout
            raise ServerAway(str(error)) from None
        spool.mark_sent(count)


def refused_for_good(error: RestException) -> bool:
    code = error.get_http_status_code()
    return 400 <= code < 500 and code not in RETRYABLE_CLIENT_ERRORS


def records_in_next_request(records: list[dict]) -> int:
    """How many leading records one request can carry: log_batch records of one run, within
    MLflow's limits and without a param or tag key twice; any other record goes alone."""
    first = records[0]
    if "artifact" in first or "status" in first:
        return 1
    metrics = params_and_tags = 0
    keys: set[str] = set()
    count = 0
    for record in records:
        if "artifact" in record or "status" in record or record["run_id"] != first["run_id"]:
            break
        record_keys = {f"p:{key}" for key, _ in record["params"]} | {f"t:{key}" for key, _ in record["tags"]}
        metrics += len(record["metrics"])
        params_and_tags += len(record_keys)
        if count and (metrics > MAX_METRICS or params_and_tags > MAX_PARAMS_AND_TAGS or keys & record_keys):
            break
        keys |= record_keys
        count += 1
    return count


def send(creds, uri: str, records: list[dict]) -> None:
    first = records[0]
    if "artifact" in first:
        upload_artifact(creds, uri, first)
    elif "status" in first:
        body = {key: first.get(key) for key in ("run_id", "status", "end_time", "run_name")}
        post(creds, UPDATE_RUN, {key: value for key, value in body.items() if value is not None})
    else:
        batch = LogBatch(
            run_id=first["run_id"],
            metrics=[Metric(*metric).to_proto() for record in records for metric in record["metrics"]],
            params=[Param(*param).to_proto() for record in records for param in record["params"]],
            tags=[RunTag(*tag).to_proto() for record in records for tag in record["tags"]],
        )
        post(creds, LOG_BATCH, json.loads(message_to_json(batch)))


def post(creds, endpoint: str, body: dict) -> None:
    response = http_request(creds, endpoint, "POST", max_retries=0, timeout=REQUEST_TIMEOUT_S, json=body)
    verify_rest_response(response, endpoint)


def upload_artifact(creds, uri: str, record: dict) -> None:
    """Upload the kept file through MLflow's artifact repository, but only once the server
    answers (that repository retries a dead server for minutes inside the call); then the kept
    copy is no longer needed."""
    verify_health(creds)
    path = Path(record["artifact"])
    if not path.exists():
        raise RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{path}: no longer on disk"})
    repository = get_artifact_repository(record["artifact_uri"], tracking_uri=uri)
    repository.log_artifact(str(path), record.get("artifact_path"))
    path.unlink()
    path.parent.rmdir()


def verify_health(creds) -> None:
    response = http_request(creds, "/health", "GET", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    if response.status_code != 200:
        raise MlflowException(f"the tracking server's /health answered {response.status_code}")


class Flusher(threading.Thread):
    """Sends a training's spool in the background, retrying with back-off while the server is away."""

    FIRST_DELAY_S, MAX_DELAY_S = 0.5, 15.0

    def __init__(self, spool: Spool):
        super().__init__(name="hpcsweep-spool", daemon=True)
        self.spool = spool
        self.wake = threading.Event()
        self.closing = False
        self.abandoned = False
        self.away_since: float | None = None

    def notify(self) -> None:
        self.wake.set()

    def run(self) -> None:
        delay = None
        while not self.abandoned:
            self.wake.wait(timeout=delay)
            self.wake.clear()
            try:
                send_unsent(self.spool)
            except ServerAway as error:
                if self.away_since is None:
                    self.away_since = time.monotonic()
                    log.warning(
                        "tracking server unreachable; training goes on, logging into %s (%s)", self.spool.path, error
                    )
                delay = min(self.MAX_DELAY_S, (delay or self.FIRST_DELAY_S / 2) * 2)
                continue
            if self.away_since is not None:
                log.warning("tracking server back after %.0f s; the spool is sent", time.monotonic() - self.away_since)
                self.away_since = None
            delay = None
            if self.closing:
                return

    def close(self, timeout_s: float) -> int:
        """Send what is left, waiting at most `timeout_s`; returns how many records stay unsent."""
        self.closing = True
        self.wake.set()
        self.join(timeout_s)
        self.abandoned = True
        self.wake.set()
        return len(self.spool.unsent())

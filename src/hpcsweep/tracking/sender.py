"""Sends a spool's records to the tracking server, in order, and says when the server is away.

Each request is made once, with a short timeout (MLflow's own client would retry for minutes
inside one call); retrying with back-off is the caller's choice: the background `Flusher`
while training runs, a person running `hpcsweep sync` after it. Consecutive log_batch records
are merged into requests within MLflow's batch limits.

Every failure is sorted by what a later try could change: a record the server will never take
as it is goes to `.rejected` (`RefusedForGood`) and the records after it go on; anything else
(no answer, a server error, refused credentials, a fault of ours such as a full disk) stops the
sending until a later try, so that nothing is lost and the order is kept. Texts that reach a log
or a person are redacted: MLflow's error texts carry the full URL, password and all.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request

from hpcsweep.tracking.credentials import redact, redact_text
from hpcsweep.tracking.spool import Spool

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
LOG_INPUTS = "/api/2.0/mlflow/runs/log-inputs"
UPDATE_RUN = "/api/2.0/mlflow/runs/update"
SENT_ALONE = ("artifact", "status", "inputs")  # record kinds that are a request each
MAX_METRICS, MAX_PARAMS_AND_TAGS = 1000, 100  # MLflow's limits for one log_batch
REQUEST_TIMEOUT_S = 10

# What an answer other than 200 means for the record sent:
# - 401/403 refuse who we are, not the record: CredentialsRefused, said as such, retried.
# - 408/429 ask to come back later.
# - A 4xx from MLflow itself (a JSON body with an error_code: INVALID_PARAMETER_VALUE, a deleted
#   run's RESOURCE_DOES_NOT_EXIST, ...) judges the request: it never succeeds as it is. Except
#   BAD_REQUEST: MLflow's server answers it for every database error SQLAlchemy does not call
#   operational (a connection-pool timeout, a deadlock, a serialization failure), so it says the
#   server failed, not the record (MLflow's own validation answers INVALID_PARAMETER_VALUE).
# - A 4xx with no MLflow error_code comes from something else (a proxy, another web server at an
#   old address): only 413, too large, is about the record; any other says nothing about it.
# - Anything else (5xx, no answer) may succeed later.
CREDENTIALS_REFUSED = (401, 403)
COME_BACK_LATER = (408, 429)
SERVER_FAILED = "BAD_REQUEST"
TOO_LARGE = 413

log = logging.getLogger(__name__)


class ServerAway(Exception):
    """The server did not answer, or cannot take the request now: try again later."""

    summary = "tracking server unreachable"


class CredentialsRefused(ServerAway):
    """The server answers, but refuses our credentials: no record can go until they are fixed."""

    summary = "the tracking server refused the credentials"


class RefusedForGood(Exception):
    """The server (or a proxy in front of it) will never take this record as it is."""


def send_unsent(spool: Spool) -> None:
    """Send every unsent record of a claimed spool, in order, setting aside what is refused for
    good. Raises ServerAway while the server cannot take them, and any other error as it came."""
    creds = get_default_host_creds(spool.uri)
    one_by_one_until = 0  # a refused batch is sent again record by record, to set aside only the bad one
    while records := spool.unsent():
        count = 1 if spool.sent < one_by_one_until else request_size(records)
        try:
            send(creds, spool.uri, records[:count])
        except RefusedForGood as refusal:
            if count > 1:
                one_by_one_until = spool.sent + count
                continue
            spool.reject(records[0], str(refusal))
        spool.mark_sent(count)


def request_size(records: list[dict]) -> int:
    try:
        return records_in_next_request(records)
    except (KeyError, TypeError, ValueError):
        return 1  # a malformed record goes alone, to be set aside alone


def records_in_next_request(records: list[dict]) -> int:
    """How many leading records one request can carry: log_batch records of one run, within
    MLflow's limits and without a param or tag key twice; any other record goes alone."""
    first = records[0]
    if sent_alone(first):
        return 1
    metrics = params_and_tags = 0
    keys: set[str] = set()
    count = 0
    for record in records:
        if sent_alone(record) or record["run_id"] != first["run_id"]:
            break
        record_keys = {f"p:{key}" for key, _ in record["params"]} | {f"t:{key}" for key, _ in record["tags"]}
        metrics += len(record["metrics"])
        params_and_tags += len(record_keys)
        if count and (metrics > MAX_METRICS or params_and_tags > MAX_PARAMS_AND_TAGS or keys & record_keys):
            break
        keys |= record_keys
        count += 1
    return count


def sent_alone(record: dict) -> bool:
    return any(kind in record for kind in SENT_ALONE)


def send(creds, uri: str, records: list[dict]) -> None:
    """One request; raises ServerAway, RefusedForGood, or an error nobody sorted (retried)."""
    try:
        request = request_for(records)
    except Exception as error:  # nothing was sent yet: the record itself is wrong
        raise RefusedForGood(f"malformed record ({type(error).__name__}: {error})") from None
    try:
        request(creds, uri)
    except requests.HTTPError as error:  # an artifact upload refused
        raise refusal(error.response, uri) from None
    except MlflowException as error:  # no answer: connection refused, timeout, a 5xx after retries
        raise ServerAway(f"{redact(uri)} is unreachable ({redact_text(str(error))})") from None


def request_for(records: list[dict]) -> Callable:
    """The request that sends `records`, to be called with (creds, uri)."""
    first = records[0]
    if "artifact" in first:
        return functools.partial(
            upload_artifact, Path(first["artifact"]), first["artifact_uri"], first.get("artifact_path")
        )
    if "status" in first:
        body = {key: first.get(key) for key in ("run_id", "status", "end_time", "run_name")}
        return functools.partial(post, UPDATE_RUN, {key: value for key, value in body.items() if value is not None})
    if "inputs" in first:
        return functools.partial(post, LOG_INPUTS, first["inputs"])
    batch = LogBatch(
        run_id=first["run_id"],
        metrics=[Metric(*metric).to_proto() for record in records for metric in record["metrics"]],
        params=[Param(*param).to_proto() for record in records for param in record["params"]],
        tags=[RunTag(*tag).to_proto() for record in records for tag in record["tags"]],
    )
    return functools.partial(post, LOG_BATCH, json.loads(message_to_json(batch)))


def post(endpoint: str, body: dict, creds, uri: str) -> None:
    response = http_request(creds, endpoint, "POST", max_retries=0, timeout=REQUEST_TIMEOUT_S, json=body)
    if response.status_code != 200:
        raise refusal(response, uri)


def upload_artifact(path: Path, artifact_uri: str, artifact_path: str | None, creds, uri: str) -> None:
    """Upload the kept file through MLflow's artifact repository, but only once the server
    answers (that repository retries a dead server for minutes inside the call); then the kept
    copy is no longer needed. A kept file already gone was uploaded by an earlier attempt, which
    removed it before it could count the record as sent."""
    if not path.exists():
        log.warning("%s: no longer on disk, so uploaded by an earlier attempt; counted as sent", path)
        return
    response = http_request(creds, "/health", "GET", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    if response.status_code != 200:
        raise refusal(response, uri)
    get_artifact_repository(artifact_uri, tracking_uri=uri).log_artifact(str(path), artifact_path)
    path.unlink()
    path.parent.rmdir()


def refusal(response: requests.Response, uri: str) -> Exception:
    """What an answer other than 200 means (see CREDENTIALS_REFUSED and below), as the exception to raise."""
    status, error_code = response.status_code, mlflow_error_code(response)
    answer = f"HTTP {status}{f' {error_code}' if error_code else ''}: {redact_text(response.text[:300])}"
    if status in CREDENTIALS_REFUSED:
        return CredentialsRefused(
            f"{redact(uri)} refused the credentials ({answer}); check MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    from_mlflow = error_code is not None and error_code != SERVER_FAILED
    if 400 <= status < 500 and status not in COME_BACK_LATER and (from_mlflow or status == TOO_LARGE):
        return RefusedForGood(answer)
    return ServerAway(f"{redact(uri)} cannot take records now ({answer})")


def mlflow_error_code(response: requests.Response) -> str | None:
    """The error_code of MLflow's JSON error body; None for an answer that is not MLflow's."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


class Flusher(threading.Thread):
    """Sends a training's spool in the background, retrying with back-off whatever stops it.

    No error ends the thread: live logging must go on for the rest of the training. Each kind of
    trouble is said once, loudly, when it starts, and once more when the spool moves again.
    """

    FIRST_DELAY_S, MAX_DELAY_S = 0.5, 15.0

    def __init__(self, spool: Spool):
        super().__init__(name="hpcsweep-spool", daemon=True)
        self.spool = spool
        self.wake = threading.Event()
        self.closing = False
        self.abandoned = False
        self.trouble: type[Exception] | None = None
        self.trouble_since = 0.0

    def notify(self) -> None:
        self.wake.set()

    def run(self) -> None:
        delay = None
        while not self.abandoned:
            self.wake.wait(timeout=delay)
            self.wake.clear()
            try:
                send_unsent(self.spool)
            except Exception as error:  # any: a dead thread would stop live logging silently
                self.report(error)
                delay = min(self.MAX_DELAY_S, (delay or self.FIRST_DELAY_S / 2) * 2)
                continue
            if self.trouble is not None:
                log.warning(
                    "the spool %s moves again after %.0f s", self.spool.path, time.monotonic() - self.trouble_since
                )
                self.trouble = None
            delay = None
            if self.closing:
                return

    def report(self, error: Exception) -> None:
        if type(error) is self.trouble:
            return
        if self.trouble is None:
            self.trouble_since = time.monotonic()
        self.trouble = type(error)
        if isinstance(error, ServerAway):
            log.warning("%s; training goes on, logging into %s (%s)", error.summary, self.spool.path, error)
        else:
            log.error(
                "sending the spool %s failed (%s: %s); training goes on, retrying with back-off",
                self.spool.path,
                type(error).__name__,
                redact_text(str(error)),
            )

    def close(self, timeout_s: float) -> int:
        """Send what is left, waiting at most `timeout_s`; returns how many records stay unsent."""
        self.closing = True
        self.wake.set()
        self.join(timeout_s)
        self.abandoned = True
        self.wake.set()
        return len(self.spool.unsent())

"""While a training runs, MLflow's writes to its tracking server go through the spool.

Autologging, our own params and tags, the system-metrics monitor, artifact uploads and `end_run`
all write through the tracking store and artifact repository MLflow builds for the tracking URI.
For the duration of a training that URI is `spool+http(s)://...`, a scheme of ours that MLflow
finds through its public plugin entry points (`mlflow.tracking_store` and
`mlflow.artifact_repository` in pyproject.toml, loaded by `plugin.py`):

- `SpoolingStore` reads from the server; every write (log_batch, metric, param, tag, run status,
  dataset inputs) is appended to the run's spool and answered at once, and a `Flusher` thread sends it.
- The runs it returns carry a `spool+` artifact URI, so MLflow builds a
  `SpoolingArtifactRepository` for them: uploads (our checkpoints, autologging's model summary)
  are kept in the spool's folder and sent in order, through the real repository.

A server that goes away therefore stalls nothing and loses nothing; training never waits on the
network for a log call. MLflow caches one store per URI and one artifact repository per run, so
both look up the active spool on every write; with none active (a cached object used after
training) they write straight to the server, as MLflow's own would.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.protos.service_pb2 import LogInputs
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import message_to_json

from hpcsweep.tracking.client import SPOOL_PREFIX, is_server, without_spool
from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.sender import Flusher
from hpcsweep.tracking.spool import Spool

# artifact URI schemes whose uploads are spooled (each has a spool+SCHEME entry point); the
# artifacts of a run on any other store are uploaded directly, as MLflow would
SPOOLED_ARTIFACT_SCHEMES = ("mlflow-artifacts", "s3")
SUPPRESS_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"

log = logging.getLogger(__name__)


class ActiveSpool:
    """The spool a training in this process writes to, and the thread that sends it."""

    def __init__(self, spool: Spool, flusher: Flusher):
        self.spool, self.flusher = spool, flusher

    def append(self, record: dict) -> None:
        self.spool.append(record)
        self.flusher.notify()


ACTIVE: dict[str, ActiveSpool] = {}  # by the server's URI, without a trailing slash
ACTIVE_LOCK = threading.Lock()


def active_spool(uri: str) -> ActiveSpool | None:
    return ACTIVE.get(without_spool(uri).rstrip("/"))


class SpoolingStore(RestStore):
    """A REST store whose writes go to the active spool for its server."""

    def __init__(self, store_uri: str):
        self.uri = without_spool(store_uri)
        super().__init__(functools.partial(get_default_host_creds, self.uri))

    def log_batch(self, run_id, metrics, params, tags) -> None:
        spool = active_spool(self.uri)
        if spool is None:
            return super().log_batch(run_id, metrics, params, tags)
        spool.append(
            {
                "run_id": run_id,
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                "params": [[p.key, p.value] for p in params],
                "tags": [[t.key, t.value] for t in tags],
            }
        )

    def log_metric(self, run_id, metric) -> None:
        self.log_batch(run_id, [metric], [], [])

    def log_param(self, run_id, param) -> None:
        self.log_batch(run_id, [], [param], [])

    def set_tag(self, run_id, tag) -> None:
        self.log_batch(run_id, [], [], [tag])

    def log_inputs(self, run_id, datasets=None, models=None) -> None:
        spool = active_spool(self.uri)
        if spool is None:
            return super().log_inputs(run_id, datasets, models)
        body = LogInputs(
            run_id=run_id,
            datasets=[dataset.to_proto() for dataset in datasets or []],
            models=[model.to_proto() for model in models or []],
        )
        spool.append({"run_id": run_id, "inputs": json.loads(message_to_json(body))})

    def update_run_info(self, run_id, run_status, end_time, run_name):
        spool = active_spool(self.uri)
        if spool is None:
            return super().update_run_info(run_id, run_status, end_time, run_name)
        spool.append(
            {"run_id": run_id, "status": RunStatus.to_string(run_status), "end_time": end_time, "run_name": run_name}
        )

    # runs come back with a spool+ artifact URI, so that MLflow builds our artifact repository
    def create_run(self, *args, **kwargs):
        return with_spooled_artifacts(super().create_run(*args, **kwargs))

    def get_run(self, run_id):
        return with_spooled_artifacts(super().get_run(run_id))


def with_spooled_artifacts(run: Run) -> Run:
    uri = run.info.artifact_uri
    if not uri or urlparse(uri).scheme not in SPOOLED_ARTIFACT_SCHEMES:
        return run
    proto = run.to_proto()
    proto.info.artifact_uri = SPOOL_PREFIX + uri
    return Run.from_proto(proto)


class SpoolingArtifactRepository(ArtifactRepository):
    """Uploads into one run go to the spool too: the file is kept in the spool's folder (a hard
    link where it can be, else a copy: the caller may delete its file) and sent in order."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.server_uri = without_spool(tracking_uri or mlflow.get_tracking_uri())
        self.real_uri = without_spool(artifact_uri)
        self.real = get_artifact_repository(self.real_uri, tracking_uri=self.server_uri)

    def log_artifact(self, local_file, artifact_path=None) -> None:
        spool = active_spool(self.server_uri)
        if spool is None:
            return self.real.log_artifact(local_file, artifact_path)
        kept = spool.spool.files.spooled_artifacts / uuid.uuid4().hex / Path(local_file).name
        kept.parent.mkdir(parents=True)
        try:
            os.link(local_file, kept)
        except OSError:
            shutil.copy2(local_file, kept)
        spool.append({"artifact": str(kept), "artifact_path": artifact_path, "artifact_uri": self.real_uri})

    def log_artifacts(self, local_dir, artifact_path=None) -> None:
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                folder = path.parent.relative_to(local_dir).as_posix()
                self.log_artifact(path, "/".join(part for part in (artifact_path, folder) if part and part != "."))

    def list_artifacts(self, path=None):
        return self.real.list_artifacts(path)

    def _download_file(self, remote_file_path, local_path):
        with tempfile.TemporaryDirectory() as folder:
            shutil.move(self.real.download_artifacts(remote_file_path, dst_path=folder), local_path)


@contextlib.contextmanager
def spooled_writes(uri: str, run_dir: Path, flush_timeout_s: float) -> Iterator[str]:
    """Spool this process's writes to the server at `uri` into `run_dir` until the block ends,
    then wait up to `flush_timeout_s` for them to be sent. Yields the URI to log through (give it
    to mlflow.set_tracking_uri and the system-metrics monitor). Other URIs (a local SQLite file or
    folder) cannot be away: for those this yields `uri` and does nothing."""
    if not is_server(uri):
        yield uri
        return
    key = uri.rstrip("/")
    spool = Spool(run_dir)
    spool.claim(uri)
    flusher = Flusher(spool)
    flusher.start()
    flusher.notify()  # an earlier attempt may have left records unsent
    with ACTIVE_LOCK:
        ACTIVE[key] = ActiveSpool(spool, flusher)
    # end_run reads the run back from the server to print its URL: a read that would wait out
    # MLflow's retries for minutes if the server is away when training ends
    suppress_url = os.environ.get(SUPPRESS_URL)
    os.environ[SUPPRESS_URL] = "true"
    try:
        yield SPOOL_PREFIX + uri
    finally:
        with ACTIVE_LOCK:
            del ACTIVE[key]
        if suppress_url is None:
            del os.environ[SUPPRESS_URL]
        else:
            os.environ[SUPPRESS_URL] = suppress_url
        left = flusher.close(flush_timeout_s)
        spool.release()
        if left:
            log.warning(
                "%d logging records could not reach %s within %.0f s; they are kept in %s: "
                "run `hpcsweep sync %s` once the server is back",
                left,
                redact(uri),
                flush_timeout_s,
                spool.path,
                run_dir,
            )

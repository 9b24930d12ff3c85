"""While a training runs, MLflow's writes to its tracking server go through the spool.

Autologging, our own params and tags, the system-metrics monitor and `end_run` all write
through MLflow's tracking store for the server's URI. For the duration of a training that
store is a `SpoolingStore`: reads still go to the server, every write (log_batch, metric,
param, tag, run status) is appended to the run's spool and answered at once, and a `Flusher`
thread sends it. Artifact uploads (our checkpoints, autologging's model summary) go the same
way through a `SpoolingArtifactRepository`. A server that goes away therefore stalls nothing and loses nothing; training
never waits on the network for a log call.

MLflow picks a store per URI scheme from a registry and caches one artifact repository per
run; it has no public hook to wrap either, so the registry entry for http/https is swapped
while training runs, the run's cached repository is ours, and both are restored after (mlflow
is pinned; the outage tests prove the swap still catches every write).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import RunStatus
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking._tracking_service.utils import _artifact_repos_cache, _get_rest_store, _tracking_store_registry
from mlflow.utils.credentials import get_default_host_creds

from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.sender import Flusher
from hpcsweep.tracking.spool import Spool

HTTP_SCHEMES = ("http", "https")
SUPPRESS_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
ARTIFACTS = "mlflow-spool-artifacts"  # files waiting for upload, in the spool's folder

log = logging.getLogger(__name__)


class SpoolingStore(RestStore):
    """A REST store whose writes are spooled and sent in the background."""

    def __init__(self, uri: str, spool: Spool, flusher: Flusher):
        super().__init__(functools.partial(get_default_host_creds, uri))
        self.uri, self.spool, self.flusher = uri, spool, flusher
        self.artifact_runs: set[str] = set()

    def spool_record(self, record: dict) -> None:
        self.spool.append(record)
        self.flusher.notify()

    def log_batch(self, run_id, metrics, params, tags) -> None:
        self.spool_record(
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

    def create_run(self, *args, **kwargs):
        return self.spool_artifacts_of(super().create_run(*args, **kwargs))

    def get_run(self, run_id):
        return self.spool_artifacts_of(super().get_run(run_id))

    def spool_artifacts_of(self, run):
        """MLflow keeps one artifact repository per run id and asks the server for the run only
        to build it: a spooling one there means uploads neither wait for nor need the server."""
        run_id, uri = run.info.run_id, run.info.artifact_uri
        if run_id not in self.artifact_runs:
            real = get_artifact_repository(uri, tracking_uri=self.uri)
            _artifact_repos_cache[run_id] = SpoolingArtifactRepository(uri, real, self, run_id)
            self.artifact_runs.add(run_id)
        return run

    def forget_artifact_runs(self) -> None:
        for run_id in self.artifact_runs:
            _artifact_repos_cache.pop(run_id, None)

    def update_run_info(self, run_id, run_status, end_time, run_name) -> None:
        self.spool_record(
            {"run_id": run_id, "status": RunStatus.to_string(run_status), "end_time": end_time, "run_name": run_name}
        )


class SpoolingArtifactRepository(ArtifactRepository):
    """Uploads into one run go to the spool too: the file is kept in the spool's folder (a hard
    link where it can be, else a copy: the caller may delete its file) and sent in order."""

    def __init__(self, artifact_uri: str, real: ArtifactRepository, store: SpoolingStore, run_id: str):
        super().__init__(artifact_uri)
        self.real, self.store, self.run_id = real, store, run_id

    def log_artifact(self, local_file, artifact_path=None) -> None:
        kept = self.store.spool.folder / ARTIFACTS / uuid.uuid4().hex / Path(local_file).name
        kept.parent.mkdir(parents=True)
        try:
            os.link(local_file, kept)
        except OSError:
            shutil.copy2(local_file, kept)
        self.store.spool_record(
            {
                "run_id": self.run_id,
                "artifact": str(kept),
                "artifact_path": artifact_path,
                "artifact_uri": self.artifact_uri,
            }
        )

    def log_artifacts(self, local_dir, artifact_path=None) -> None:
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                folder = path.parent.relative_to(local_dir).as_posix()
                self.log_artifact(path, "/".join(part for part in (artifact_path, folder) if part and part != "."))

    def list_artifacts(self, path=None):
        return self.real.list_artifacts(path)

    def _download_file(self, remote_file_path, local_path):
        return self.real._download_file(remote_file_path, local_path)


@contextlib.contextmanager
def spooled_writes(uri: str, run_dir: Path, flush_timeout_s: float) -> Iterator[None]:
    """Spool this process's writes to the server at `uri` into `run_dir` until the block ends,
    then wait up to `flush_timeout_s` for them to be sent. Other URIs (a local SQLite file or
    folder) cannot be away: for those this does nothing."""
    if urlparse(uri).scheme not in HTTP_SCHEMES:
        yield
        return
    spool = Spool(run_dir)
    spool.claim(uri)
    flusher = Flusher(spool)
    flusher.start()
    flusher.notify()  # an earlier attempt may have left records unsent
    store = SpoolingStore(uri, spool, flusher)

    def build(store_uri: str, **kwargs) -> RestStore:
        return store if store_uri.rstrip("/") == uri.rstrip("/") else _get_rest_store(store_uri, **kwargs)

    use_store_builder(build)
    # end_run reads the run back from the server to print its URL: a read that would wait out
    # MLflow's retries for minutes if the server is away when training ends
    suppress_url = os.environ.get(SUPPRESS_URL)
    os.environ[SUPPRESS_URL] = "true"
    try:
        yield
    finally:
        use_store_builder(_get_rest_store)
        store.forget_artifact_runs()
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


def use_store_builder(builder) -> None:
    for scheme in HTTP_SCHEMES:
        _tracking_store_registry.register(scheme, builder)
    type(_tracking_store_registry)._get_store_with_resolved_uri.cache_clear()

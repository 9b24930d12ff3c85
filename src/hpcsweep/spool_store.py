"""While a training runs, MLflow's writes to its tracking server go through the spool.

Autologging, our own params and tags, the system-metrics monitor and `end_run` all write
through MLflow's tracking store for the server's URI. For the duration of a training that
store is a `SpoolingStore`: reads still go to the server, every write (log_batch, metric,
param, tag, run status) is appended to the run's spool and answered at once, and a `Flusher`
thread sends it. A server that goes away therefore stalls nothing and loses nothing; training
never waits on the network for a log call.

MLflow picks a store per URI scheme from a registry; it has no public hook to wrap the REST
store for one URI, so the registry entry for http/https is swapped while training runs and
restored after (mlflow is pinned; the outage test proves the swap still catches the writes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import RunStatus
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking._tracking_service.utils import _get_rest_store, _tracking_store_registry
from mlflow.utils.credentials import get_default_host_creds

from hpcsweep.credentials import redact
from hpcsweep.spool import Spool
from hpcsweep.spool_sender import Flusher

HTTP_SCHEMES = ("http", "https")

log = logging.getLogger(__name__)


class SpoolingStore(RestStore):
    """A REST store whose writes are spooled and sent in the background."""

    def __init__(self, uri: str, spool: Spool, flusher: Flusher):
        super().__init__(functools.partial(get_default_host_creds, uri))
        self.spool, self.flusher = spool, flusher

    def _spool(self, record: dict) -> None:
        self.spool.append(record)
        self.flusher.notify()

    def log_batch(self, run_id, metrics, params, tags) -> None:
        self._spool({"run_id": run_id,
                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                     "params": [[p.key, p.value] for p in params],
                     "tags": [[t.key, t.value] for t in tags]})

    def log_metric(self, run_id, metric) -> None:
        self.log_batch(run_id, [metric], [], [])

    def log_param(self, run_id, param) -> None:
        self.log_batch(run_id, [], [param], [])

    def set_tag(self, run_id, tag) -> None:
        self.log_batch(run_id, [], [], [tag])

    def update_run_info(self, run_id, run_status, end_time, run_name) -> None:
        self._spool({"run_id": run_id, "status": RunStatus.to_string(run_status), "end_time": end_time,
                     "run_name": run_name})


class SpooledWrites:
    """What a training holds while its writes are spooled: artifacts go the same way."""

    def __init__(self, store: SpoolingStore):
        self.store = store

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.store._spool({"run_id": run_id, "artifact": str(Path(path).resolve()), "artifact_path": artifact_path})


@contextlib.contextmanager
def spooled_writes(uri: str, run_dir: Path, flush_timeout_s: float) -> Iterator[SpooledWrites | None]:
    """Spool this process's writes to the server at `uri` into `run_dir` until the block ends,
    then wait up to `flush_timeout_s` for them to be sent. Other URIs (a local SQLite file or
    folder) cannot be away: for those this does nothing and yields None."""
    if urlparse(uri).scheme not in HTTP_SCHEMES:
        yield None
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
    try:
        yield SpooledWrites(store)
    finally:
        use_store_builder(_get_rest_store)
        left = flusher.close(flush_timeout_s)
        spool.release()
        if left:
            log.warning("%d logging records could not reach %s within %.0f s; they are kept in %s: "
                        "run `hpcsweep sync %s` once the server is back", left, redact(uri), flush_timeout_s,
                        spool.path, run_dir)


def use_store_builder(builder) -> None:
    for scheme in HTTP_SCHEMES:
        _tracking_store_registry.register(scheme, builder)
    type(_tracking_store_registry)._get_store_with_resolved_uri.cache_clear()

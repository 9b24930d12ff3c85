"""Which tracking store a command talks to, named the same way in every process of a study.

`tracking.uri`, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory (beside the
params file when that is elsewhere: params_file.py). A relative SQLite path is made absolute
before it is handed to jobs, which run in other directories.
While a training logs through its spool, MLflow's URI is the server's with `spool+` in front
(store.py); processes it starts inherit that, and still mean the server itself. Only a server
(http, https) can be away, so only its writes are spooled.
mlflow is imported where a client is made, not with this module: `hpcsweep status` names its store
here and never imports mlflow (4 s; grid/run_reading.py).
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from hpcsweep.config import Config
from hpcsweep.errors import UserError
from hpcsweep.params_file import DEFAULT_URI, sqlite_beside
from hpcsweep.tracking.credentials import redact, redact_text, without_login

if TYPE_CHECKING:
    import mlflow

SPOOL_PREFIX = "spool+"
HTTP_SCHEMES = ("http", "https")


def without_spool(uri: str) -> str:
    return uri.removeprefix(SPOOL_PREFIX)


def tracking_uri(config: Config) -> str:
    return without_spool(config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)


def is_server(uri: str) -> bool:
    """A tracking server, as opposed to a local SQLite file or folder."""
    return urlparse(uri).scheme in HTTP_SCHEMES


def configured_server(config: Config) -> str | None:
    """The tracking server configured now, if the configured store is one: where spools go."""
    uri = tracking_uri(config)
    return uri if is_server(uri) else None


def absolute_uri(uri: str) -> str:
    """A relative SQLite path would mean a different file in every job's working directory."""
    return sqlite_beside(uri, Path.cwd())


def store_uri(config: Config) -> str:
    """The configured store, as every process of a study names it."""
    return absolute_uri(tracking_uri(config))


def tracking_client(config: Config) -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient(store_uri(config))


def check_tracking_server(uri: str) -> None:
    """Fail with one line unless the store answers: a server its /health, a local store a search."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(health_url(uri), timeout=10):
                return
        except OSError as error:
            raise UserError(
                f"tracking server {redact(uri)} does not answer ({redact_text(str(error))}); "
                f"start it or set tracking.uri"
            ) from None
    import mlflow

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # any store failure means jobs could not log
        raise UserError(f"tracking store {redact(uri)} is not usable ({redact_text(str(error))})") from None


def health_url(uri: str) -> str:
    """The server's /health, which needs no login: urllib would take a user:password@ for part of the host."""
    parts = urllib.parse.urlsplit(without_login(uri)[0])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/health", "", ""))

"""Which tracking store a command talks to, named the same way in every process of a study.

`tracking.uri`, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory (beside the
params file when that is elsewhere: params_file.py). A relative SQLite path is made absolute
before it is handed to jobs, which run in other directories.
While a training logs through its spool, MLflow's URI is the server's with `spool+` in front
(store.py); processes it starts inherit that, and still mean the server itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from hpcsweep.config import Config
from hpcsweep.params_file import DEFAULT_URI, sqlite_beside

SPOOL_PREFIX = "spool+"


def without_spool(uri: str) -> str:
    return uri.removeprefix(SPOOL_PREFIX)


def tracking_uri(config: Config) -> str:
    return without_spool(config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)


def absolute_uri(uri: str) -> str:
    """A relative SQLite path would mean a different file in every job's working directory."""
    return sqlite_beside(uri, Path.cwd())


def tracking_client(config: Config) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(absolute_uri(tracking_uri(config)))

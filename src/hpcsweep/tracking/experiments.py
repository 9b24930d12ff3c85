"""The experiment a run or a grid logs into: found by name, or created once, marked as model training.

Created with its artifact location fixed where the store is: on a SQLite store MLflow would put
an experiment's artifacts under `./mlruns` of whatever folder first logged into it, a subfolder
of the project, or the throwaway copy `dvc exp run --temp` trains in (deleted with the copy, and
with it every later run's checkpoints). Here they go beside the database file, in `mlruns/`,
which is where `mlflow ui` in that folder looks for them. A server decides for itself
(`--artifacts-destination`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from mlflow import MlflowClient

from hpcsweep.params_file import SQLITE_PREFIX
from hpcsweep.tracking.ui_metadata import ensure_experiment_kind, experiment_kind_tags

ARTIFACTS_FOLDER = "mlruns"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing."""
    found = client.get_experiment_by_name(name)
    if found:
        ensure_experiment_kind(client, found.experiment_id)
        return found.experiment_id
    return client.create_experiment(
        name, artifact_location=artifact_location(client.tracking_uri, name), tags=experiment_kind_tags()
    )


def artifact_location(uri: str, name: str) -> str | None:
    """`mlruns/<name>` beside an (absolute) SQLite database; None, the store's default, elsewhere."""
    if not uri.startswith(SQLITE_PREFIX + "/"):
        return None
    database = Path(uri.removeprefix(SQLITE_PREFIX))
    return (database.parent / ARTIFACTS_FOLDER / quote(name, safe="")).as_uri()

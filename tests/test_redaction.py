"""No password or token in what others read: messages, the launch run's artifacts.

Every test talks to a real `mlflow server` through a URI that carries a user and a password (an
unauthenticated server ignores them), as a user who wrote them into tracking.uri would.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pytest

from helpers.runs import QUICK, TINY, hpcsweep, overrides, runs_of, write_grid
from helpers.services import free_port
from hpcsweep.errors import UserError
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.spec import load_grid
from hpcsweep.grid.status import status_rows
from hpcsweep.report.records import fetch_records
from hpcsweep.tracking.client import check_tracking_server
from hpcsweep.tracking.experiments import experiment_id

PASSWORD = "pw-" + uuid.uuid4().hex


def with_password(uri: str) -> str:
    return uri.replace("http://", f"http://alice:{PASSWORD}@")


@pytest.fixture
def client(tracking_server) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(with_password(tracking_server))


def error_of(call) -> str:
    with pytest.raises(UserError) as raised:
        call()
    return str(raised.value)


def test_a_server_whose_uri_has_a_password_passes_the_launch_check(tracking_server):
    check_tracking_server(with_password(tracking_server))


@pytest.mark.parametrize(
    "uri",
    [
        f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}",
        f"mysql://mlflow:{PASSWORD}@127.0.0.1:{free_port()}/mlflow",  # no driver: fails at once
    ],
    ids=["server", "database"],  # the same on every pytest-xdist worker, unlike the password and port
)
def test_the_launch_check_names_an_unreachable_store_without_its_password(uri):
    message = error_of(lambda: check_tracking_server(uri))
    assert "alice:***@" in message or "mlflow:***@" in message
    assert PASSWORD not in message


def test_status_and_report_messages_name_the_server_without_its_password(client):
    unknown = f"none-{uuid.uuid4().hex[:8]}"
    messages = [
        error_of(lambda: status_rows(client.tracking_uri, unknown)),
        error_of(lambda: fetch_records(client, unknown, None)),
        error_of(lambda: fetch_records(client, None, unknown)),
    ]
    empty = client.create_experiment(f"empty-{uuid.uuid4().hex[:8]}")
    messages.append(error_of(lambda: fetch_records(client, client.get_experiment(empty).name, None)))
    for message in messages:
        assert "alice:***@127.0.0.1" in message and PASSWORD not in message, message


def test_the_launch_runs_artifacts_hold_no_password(client, project, tmp_path):
    secret_uris = [
        f"tracking.uri={client.tracking_uri}",
        f"tracking.backend_store_uri=postgresql://mlflow:{PASSWORD}@db/m",
    ]
    grid = load_grid(
        write_grid(project, {"name": "secret", "base": TINY, "grid": {"seed": [0, 1]}}),
        project / "params.yaml",
        dict(assignment.split("=", 1) for assignment in secret_uris),
    )
    assert grid.points[0].config.tracking.uri == client.tracking_uri  # the jobs' points files keep it
    experiment = experiment_id(client, f"secret-{uuid.uuid4().hex[:8]}")
    command = f"hpcsweep grid grid.yaml -s {secret_uris[0]} -s {secret_uris[1]}"
    parent = grid_runs.create_parent(client, grid, experiment, command)

    folder = Path(client.download_artifacts(parent, "launch", str(tmp_path)))
    texts = {path.name: path.read_text() for path in folder.iterdir()}
    assert texts.keys() == {"grid.yaml", "points.json", "command.txt"}
    assert not [name for name, text in texts.items() if PASSWORD in text]
    tracking = json.loads(texts["points.json"])["points"][0]["config"]["tracking"]
    assert tracking["uri"] == client.tracking_uri.replace(PASSWORD, "***")
    assert tracking["backend_store_uri"] == "postgresql://mlflow:***@db/m"


@pytest.mark.slow
def test_a_trainings_config_artifact_and_spool_hold_no_password(prepared, tracking_server):
    project, experiment = prepared.parent.parent, f"redacted-{uuid.uuid4().hex[:8]}"
    uri = with_password(tracking_server)
    done = hpcsweep(
        ["train", *overrides(*QUICK, f"tracking.experiment={experiment}", f"tracking.uri={uri}")], project, uri
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = runs_of(tracking_server, experiment)
    config = mlflow.MlflowClient(tracking_server).download_artifacts(run.info.run_id, "config.json", str(project))
    written = [Path(config).read_text(), done.stdout, done.stderr, *map(str, run.data.params.values())]
    written += [path.read_text() for path in (project / "checkpoints").rglob("mlflow-spool.*") if path.is_file()]
    assert json.loads(Path(config).read_text())["tracking"]["uri"] == tracking_server.replace(
        "http://", "http://alice:***@"
    )
    assert not [text for text in written if PASSWORD in text]

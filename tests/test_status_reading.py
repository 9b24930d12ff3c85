"""`hpcsweep status` reads a server's runs over REST, in start-time slices, without importing mlflow.

What it reads must be what MLflow's own client reads: every point run of the grid exactly once,
newest first, with the same status, tags, params and latest metrics, however the runs' start times
lie (all in one millisecond, or one run a month after the rest), and none of another grid. It
logs in and presents certificates from MLflow's client's variables (against a real server with a
login and one with TLS: test_tracking_server.py's auth and https tests).
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import uuid

import mlflow
import pytest
from mlflow.entities import Metric, Param

from helpers.tls import self_signed_certificate
from hpcsweep.errors import UserError
from hpcsweep.grid import run_reading
from hpcsweep.grid.run_reading import READ_SLICES, ROLE, grid_point_runs
from hpcsweep.tracking import rest_reader
from hpcsweep.tracking.credentials import without_login

pytestmark = pytest.mark.server

T0 = 1_700_000_000_000  # ms
DAY_MS = 86_400_000


def make_grid(client: mlflow.MlflowClient, experiment: str, grid: str, start_times: list[int]) -> None:
    """Point runs of `grid` started at `start_times`, each with a status, params, tags and metrics."""
    statuses = ["FINISHED", "RUNNING", "SCHEDULED", "FAILED", "KILLED"]
    for index, start in enumerate(start_times):
        tags = {"grid": grid, ROLE: "point", "config_hash": f"{index:016x}", "point": f"lr={index}"}
        run = client.create_run(experiment, start_time=start, tags=tags)
        metrics = [Metric("val/acc", index / 100 + step, T0 + step, step) for step in range(2)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param("lr", str(index))])
        client.update_run(run.info.run_id, status=statuses[index % len(statuses)])


def as_client_reads(runs) -> list[tuple]:
    return [
        (run.info.run_id, run.info.status, run.info.start_time, run.data.tags, run.data.metrics, run.data.params)
        for run in runs
    ]


@pytest.fixture(scope="module")
def grids(tracking_server) -> dict[str, list[int]]:
    """Three grids in one experiment: start times spread, skewed by a month, and all in one ms."""
    client = mlflow.MlflowClient(tracking_server)
    experiment = client.create_experiment(f"status-reading-{uuid.uuid4().hex[:8]}")
    suffix = uuid.uuid4().hex[:6]
    starts = {
        f"spread-{suffix}": [T0 + 997 * index for index in range(23)],
        f"skewed-{suffix}": [T0 + index for index in range(9)] + [T0 + 30 * DAY_MS],
        f"instant-{suffix}": [T0] * 5,
    }
    for grid, start_times in starts.items():
        make_grid(client, experiment, grid, start_times)
    return starts


def test_every_point_run_is_read_once_newest_first_as_mlflows_client_reads_it(tracking_server, grids):
    client = mlflow.MlflowClient(tracking_server)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    for grid, start_times in grids.items():
        runs = grid_point_runs(tracking_server, grid)
        assert len(runs) == len(start_times) and len({run.info.run_id for run in runs}) == len(start_times), grid
        assert [run.info.start_time for run in runs] == sorted(start_times, reverse=True)
        expected = client.search_runs(experiments, run_reading.point_query(grid))
        assert sorted(as_client_reads(runs)) == sorted(as_client_reads(expected))
    assert READ_SLICES > 1  # or the slices were never exercised


def test_status_of_a_server_never_imports_mlflow(tracking_server, grids):
    """Importing mlflow takes ~4 s here: more than status may take for 1000 points (issue 16)."""
    grid = next(iter(grids))
    check = (
        "import sys\n"
        "from hpcsweep.grid.status import status_rows, summary\n"
        f"rows = status_rows({tracking_server!r}, {grid!r})\n"
        "assert 'mlflow' not in sys.modules, 'status imported mlflow'\n"
        "print(summary(rows))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{len(grids[grid])} points: ")


def test_a_server_that_does_not_answer_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"^tracking server http://127\.0\.0\.1:9/ does not answer \(.*\)$"):
        grid_point_runs("http://127.0.0.1:9/", "any")


def test_the_login_is_mlflows_token_else_its_user_and_password_else_the_uris(monkeypatch):
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    location, login = without_login("http://alice:p%40ss/w@db:5000/mlflow")
    assert (location, login) == ("http://db:5000/mlflow", "alice:p@ss/w")
    assert rest_reader.headers(login) == {"Authorization": "Basic " + base64.b64encode(b"alice:p@ss/w").decode()}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert rest_reader.headers(login) == {"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    assert rest_reader.headers(login) == {"Authorization": "Bearer t0ken"}


def test_a_client_certificate_is_presented_from_mlflows_variable(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    bundle = tmp_path / "client.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", str(bundle))
    assert rest_reader.tls_context()  # the certificate and key load
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", str(cert))  # no key in it
    with pytest.raises(ssl.SSLError):
        rest_reader.tls_context()

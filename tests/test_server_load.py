"""32 jobs logging at once: the PostgreSQL + S3 server keeps every point and byte.

Each client process logs a run of 50 epochs x 6 metrics, 5 params and a 1 MB artifact (see
logging_load.py). Against `hpcsweep server` on PostgreSQL + SeaweedFS everything must be there,
value for value and byte for byte. How SQLite fares under the same load (what this project
replaces, not what it promises) is measured by benchmarks/tracking_server.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from helpers.logging_load import artifact_bytes, metric_value
from helpers.project import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]

CLIENTS, EPOCHS, METRICS, PARAMS, ARTIFACT_BYTES = 32, 50, 6, 5, 1 << 20


def run_load(uri: str, folder: Path, experiment: str) -> dict:
    out = folder / f"{experiment}.json"
    command = [
        sys.executable,
        str(ROOT / "tests" / "helpers" / "logging_load.py"),
        uri,
        "--clients",
        str(CLIENTS),
        "--epochs",
        str(EPOCHS),
        "--metrics",
        str(METRICS),
        "--params",
        str(PARAMS),
        "--artifact-bytes",
        str(ARTIFACT_BYTES),
        "--experiment",
        experiment,
        "--scratch",
        str(folder),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def missing_data(uri: str, outcome: dict, folder: Path) -> list[str]:
    """Everything of one client's run that is not on the server exactly as it was logged."""
    client, run_id = mlflow.MlflowClient(uri), outcome["run_id"]
    if run_id is None:
        return ["no run"]
    number, problems = outcome["client"], []
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        problems.append(f"status {run.info.status}")
    if run.data.params != {f"param_{i}": str(number * 10 + i) for i in range(PARAMS)}:
        problems.append(f"params {run.data.params}")
    for metric in range(METRICS):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"metric_{metric}"))
        if points != [(epoch, metric_value(number, epoch, metric)) for epoch in range(EPOCHS)]:
            problems.append(f"metric_{metric}: {len(points)} points")
    try:
        local = client.download_artifacts(run_id, f"client-{number}.bin", str(folder / "downloaded" / run_id))
        if Path(local).read_bytes() != artifact_bytes(number, ARTIFACT_BYTES):
            problems.append("artifact bytes differ")
    except Exception as error:
        problems.append(f"artifact: {str(error).splitlines()[0][:200]}")
    return problems


def test_32_clients_log_every_point_and_byte_to_postgres_and_s3(shared_server, tmp_path):
    result = run_load(shared_server.uri, tmp_path, "load-postgres")
    errors = [error for outcome in result["clients"] for error in outcome["errors"]]
    assert not errors, errors[:5]
    assert len(result["clients"]) == CLIENTS
    problems = {outcome["client"]: missing_data(shared_server.uri, outcome, tmp_path) for outcome in result["clients"]}
    assert not any(problems.values()), {client: found for client, found in problems.items() if found}
    print(f"\nPostgreSQL + S3: {CLIENTS} clients in {result['wall_s']:.1f} s, nothing missing")

"""Scaling the shared tracking server: artifacts straight to S3, several servers on one database.

With `--no-serve-artifacts` a training's checkpoints go from the job to S3 and never
through the server; several `hpcsweep server` processes started at once on a new database all come
up and share its runs: slurm/tracking-server.sbatch with several tasks, on the dev cluster, where
the script with one task also runs as a job and publishes its URI for the jobs to find.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest
from mlflow.entities import Metric

from helpers.project import ROOT
from helpers.runs import QUICK, environment, overrides
from helpers.services import ARTIFACT_BUCKET, HpcsweepServer, free_port, postgres, server_environment

pytestmark = [pytest.mark.server, pytest.mark.slow]


def start_server(folder: Path, database_uri: str, *arguments: str, **extra_environment: str) -> HpcsweepServer:
    database, server_env = server_environment({}, database_uri)
    server = HpcsweepServer(
        folder,
        ["--params", str(ROOT / "params.yaml"), "--backend-store-uri", database, *arguments],
        server_env | extra_environment,
    )
    server.start()
    return server


def log_runs_at_once(uris: list[str], experiment_id: str, clients: int) -> list[str]:
    """Each client makes a run through one of the servers in turn, logs ten steps of six metrics
    and ends it; returns the errors."""
    errors = []

    def client(index: int) -> None:
        try:
            tracking = mlflow.MlflowClient(uris[index % len(uris)])
            run_id = tracking.create_run(experiment_id).info.run_id
            for step in range(10):
                now = int(time.time() * 1000)
                tracking.log_batch(run_id, metrics=[Metric(f"m{key}", step, now, step) for key in range(6)])
            tracking.set_terminated(run_id)
        except Exception as error:
            errors.append(f"client {index}: {error}")

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def wait_for_file(path: Path, job: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        queue = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout
        logs = "".join(log.read_text() for log in path.parent.glob("tracking-server-*.log"))
        assert queue.strip() and time.monotonic() < deadline, f"no {path.name}: {logs[-3000:]}"
        time.sleep(1)
    return path.read_text()


@pytest.mark.slurm
def test_the_sbatch_script_with_two_tasks_serves_one_new_database_from_two_servers(tmp_path, slurm_cluster):
    """Started at the same moment on an empty database, both create its tables once between them
    (a lock), come up, list themselves for the proxy, and each sees every run the other took."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with postgres(tmp_path / "postgres") as database_uri:
        database, server_env = server_environment({}, database_uri)
        job_env = environment("unused", HPCSWEEP_SERVER_PORT=str(free_port())) | server_env
        job_env |= {key: os.environ[key] for key in ("SLURM_CONF",) if key in os.environ}
        stores = ["--backend-store-uri", database, "--artifacts-destination", str(tmp_path / "artifacts")]
        options = ["--parsable", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--mem=4G", "--partition=debug"]
        submitted = subprocess.run(
            ["sbatch", *options, str(ROOT / "slurm" / "tracking-server.sbatch"), "--insecure", *stores],
            cwd=tmp_path,
            env=job_env,
            capture_output=True,
            text=True,
        )
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        try:
            uris = wait_for_file(tmp_path / "tracking-server.uris", job).split()
            assert len(uris) == 2 and len(set(uris)) == 2, uris
            experiment_id = mlflow.MlflowClient(uris[0]).create_experiment(f"scaling-sbatch-{os.getpid()}")
            assert log_runs_at_once(uris, experiment_id, clients=8) == []
            for uri in uris:  # each server sees every run, whichever took it
                runs = mlflow.MlflowClient(uri).search_runs([experiment_id], max_results=1000)
                assert len(runs) == 8 and {run.info.status for run in runs} == {"FINISHED"}
                assert all(run.data.metrics == {f"m{key}": 9.0 for key in range(6)} for run in runs)
        finally:
            subprocess.run(["scancel", "--full", job], env=job_env)


def train(project: Path, uri: str, experiment: str, **extra_environment: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hpcsweep", "train"]
    command += overrides(*QUICK, f"tracking.experiment={experiment}", f"tracking.checkpoint_dir={project / 'ckpt'}")
    return subprocess.run(
        command, cwd=project, env=environment(uri, **extra_environment), capture_output=True, text=True, timeout=600
    )


def test_without_serve_artifacts_the_checkpoints_go_from_the_job_straight_to_s3(
    prepared, postgres_uri, s3_store, tmp_path
):
    prefix = f"scaling-direct-{uuid.uuid4().hex[:8]}"
    server = start_server(
        tmp_path / "server",
        postgres_uri,
        "--no-serve-artifacts",
        "--artifacts-destination",
        f"s3://{ARTIFACT_BUCKET}/{prefix}",
        **s3_store,
    )
    try:
        project = prepared.parent.parent
        keyless = train(project, server.uri, f"{prefix}-keyless")  # refused as its run opens, not hours later
        assert keyless.returncode == 1
        assert "this job has no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in keyless.stderr
        client = mlflow.MlflowClient(server.uri)
        (refused,) = client.search_runs([client.get_experiment_by_name(f"{prefix}-keyless").experiment_id])
        assert refused.info.status == "FAILED" and "no S3 keys" in refused.data.tags["hpcsweep.failure_reason"]
        done = train(project, server.uri, prefix, **s3_store)
        assert done.returncode == 0, done.stderr[-3000:]
        (run,) = mlflow.MlflowClient(server.uri).search_runs(
            [mlflow.MlflowClient(server.uri).get_experiment_by_name(prefix).experiment_id]
        )
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith(f"s3://{ARTIFACT_BUCKET}/{prefix}/")
        s3 = boto3.client("s3", endpoint_url=s3_store["MLFLOW_S3_ENDPOINT_URL"], **lower_keys(s3_store))
        listed = s3.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix=prefix)
        keys = [item["Key"] for item in listed.get("Contents", [])]
        assert any(key.endswith(f"{run.info.run_id}/artifacts/checkpoints/last.ckpt") for key in keys), keys
        log = (tmp_path / "server" / "server.log").read_text()  # the server never carried a byte of it
        assert "POST /api/2.0/mlflow/runs/create" in log and "/api/2.0/mlflow-artifacts/" not in log
    finally:
        server.stop()


def lower_keys(s3: dict[str, str]) -> dict[str, str]:
    return {name.lower(): s3[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


@pytest.mark.slurm
def test_the_sbatch_script_runs_the_server_as_a_job_and_publishes_its_uri(
    slurm_cluster, postgres_uri, s3_store, tmp_path, monkeypatch
):
    database, server_env = server_environment(s3_store, postgres_uri)
    server_env |= {key: os.environ[key] for key in slurm_cluster} | {"HPCSWEEP_SERVER_PORT": str(free_port())}
    server_env["PATH"] = f"{Path(sys.executable).parent}:{server_env['PATH']}"
    server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "admin-" + uuid.uuid4().hex  # the script serves with --auth
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server_env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--cpus-per-task=1",
            "--mem=1G",
            "--time=00:10:00",
            str(ROOT / "slurm" / "tracking-server.sbatch"),
            "--backend-store-uri",
            database,
            "--artifacts-destination",
            f"s3://{ARTIFACT_BUCKET}/artifacts",
        ],
        cwd=tmp_path,
        env=server_env,
        capture_output=True,
        text=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "tracking-server.uri").exists():
            assert time.monotonic() < deadline, "\n".join(p.read_text() for p in tmp_path.glob("tracking-server-*.log"))
            time.sleep(1)
        uri = (tmp_path / "tracking-server.uri").read_text().strip()
        assert uri == f"http://{socket.gethostname()}:{server_env['HPCSWEEP_SERVER_PORT']}"
        client = mlflow.MlflowClient(uri)  # by the node's name, as jobs on other nodes would
        run = client.create_run(client.create_experiment(f"sbatch-{uuid.uuid4().hex[:8]}"))
        client.log_metric(run.info.run_id, "x", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
        (log,) = tmp_path.glob("tracking-server-*.log")
        assert f"export MLFLOW_TRACKING_URI={uri}" in log.read_text()
        assert server_env["PGPASSWORD"] not in log.read_text()
        assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in log.read_text()
    finally:
        subprocess.run(["scancel", job], env=server_env, check=False)

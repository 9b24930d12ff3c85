"""The shared tracking server for real: PostgreSQL + SeaweedFS S3 + `hpcsweep server`.

A training survives the server going away (every epoch's metrics land once), `hpcsweep sync`
sends what a training left behind exactly once, `--auth` keeps anonymous and read-only users
out, DVC round-trips the prepared data through the same S3, and every bad setting stops
`hpcsweep server` at start-up with one line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from helpers.project import ROOT
from helpers.runs import QUICK, environment, hpcsweep, overrides
from helpers.services import ARTIFACT_BUCKET, HpcsweepServer, free_port, server_environment
from helpers.tls import self_signed_certificate
from hpcsweep.errors import UserError
from hpcsweep.grid.run_reading import grid_point_runs

pytestmark = [pytest.mark.server, pytest.mark.slow]

EPOCH_METRICS = ("train/loss", "val/loss", "val/acc", "epoch_time_s")


def start_training(project: Path, uri: str, experiment: str, *assignments: str, **extra_environment: str):
    """`hpcsweep train` in the background, its output in project/train.log."""
    command = [
        sys.executable,
        "-m",
        "hpcsweep",
        "train",
        *overrides(
            *QUICK,
            "max_epochs=4",
            f"tracking.experiment={experiment}",
            f"tracking.checkpoint_dir={project / 'checkpoints'}",
            *assignments,
        ),
    ]
    log = open(project / "train.log", "w")
    return subprocess.Popen(
        command, cwd=project, env=environment(uri, **extra_environment), stdout=log, stderr=subprocess.STDOUT
    )


def the_run(uri: str, experiment: str) -> mlflow.entities.Run | None:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return runs[0] if runs else None


def wait_for_first_epoch(uri: str, experiment: str, training: subprocess.Popen, project: Path) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = the_run(uri, experiment)
        if run and "val/acc" in run.data.metrics:
            return run.info.run_id
        assert training.poll() is None, (project / "train.log").read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError("no epoch was logged within 180 s")


def epoch_steps(uri: str, run_id: str) -> dict[str, list[int]]:
    client = mlflow.MlflowClient(uri)
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in EPOCH_METRICS}


def assert_run_complete(uri: str, run_id: str, project: Path, epochs: int) -> None:
    """FINISHED, every per-epoch metric once per epoch, the checkpoints in S3 byte for byte."""
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert epoch_steps(uri, run_id) == {key: list(range(epochs)) for key in EPOCH_METRICS}
    downloaded = Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", str(project / "downloaded")))
    assert downloaded.read_bytes() == (project / "checkpoints" / run_id_folder(project) / "last.ckpt").read_bytes()


def run_id_folder(project: Path) -> str:
    (folder,) = [path.name for path in (project / "checkpoints").iterdir() if path.is_dir()]
    return folder


@pytest.fixture
def experiment() -> str:
    return f"server-{uuid.uuid4().hex[:8]}"


def test_training_outlives_a_20_s_outage_and_every_epoch_is_logged_once(prepared, shared_server, experiment):
    project = prepared.parent.parent
    training = start_training(project, shared_server.uri, experiment, "max_epochs=8")
    run_id = wait_for_first_epoch(shared_server.uri, experiment, training, project)
    down_ms = time.time() * 1000
    shared_server.stop(crash=True)
    time.sleep(20)
    up_ms = time.time() * 1000
    shared_server.start()
    assert training.wait(timeout=300) == 0, (project / "train.log").read_text()[-3000:]

    assert_run_complete(shared_server.uri, run_id, project, epochs=8)
    history = mlflow.MlflowClient(shared_server.uri).get_metric_history(run_id, "val/acc")
    assert any(down_ms < point.timestamp < up_ms for point in history), "no epoch ended during the outage"
    log = (project / "train.log").read_text()
    assert "tracking server unreachable; training goes on" in log


def test_sync_sends_a_leftover_spool_once_and_a_second_sync_adds_nothing(prepared, shared_server, experiment):
    project = prepared.parent.parent
    training = start_training(project, shared_server.uri, experiment, "tracking.flush_timeout_s=0")
    run_id = wait_for_first_epoch(shared_server.uri, experiment, training, project)
    shared_server.stop(crash=True)
    try:
        assert training.wait(timeout=300) == 0, (project / "train.log").read_text()[-3000:]
        assert (
            f"hpcsweep sync {project / 'checkpoints' / run_id_folder(project)}" in (project / "train.log").read_text()
        )
        refused = hpcsweep(["sync", str(project / "checkpoints")], project, shared_server.uri, timeout=300)
        assert refused.returncode == 1 and "still unsent" in refused.stderr
    finally:
        shared_server.start()

    first = hpcsweep(["sync", str(project / "checkpoints")], project, shared_server.uri, timeout=300)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r".*: sent \d+ records", first.stdout.strip()), first.stdout
    assert_run_complete(shared_server.uri, run_id, project, epochs=4)
    before = epoch_steps(shared_server.uri, run_id)

    second = hpcsweep(["sync", str(project / "checkpoints")], project, shared_server.uri, timeout=300)
    assert second.returncode == 0 and "nothing to send" in second.stdout
    assert epoch_steps(shared_server.uri, run_id) == before


def server_command(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hpcsweep",
        "server",
        "--params",
        str(ROOT / "params.yaml"),
        "--host",
        "127.0.0.1",
        *args,
    ]


@pytest.mark.parametrize(
    "case", ["database unreachable", "bucket missing", "wrong S3 keys", "port in use", "auth without admin password"]
)
def test_a_bad_setting_stops_the_server_at_start_up_with_one_line(
    case, postgres_uri, s3_store, shared_server, tmp_path
):
    database, server_env = server_environment(s3_store, postgres_uri)
    destination, port = f"s3://{ARTIFACT_BUCKET}/artifacts", free_port()
    extra, expected = [], ""
    if case == "database unreachable":
        database, expected = f"postgresql://mlflow@127.0.0.1:{free_port()}/mlflow", "--backend-store-uri"
    elif case == "bucket missing":
        destination, expected = "s3://no-such-bucket/artifacts", "bucket 'no-such-bucket' does not exist"
    elif case == "wrong S3 keys":
        server_env["AWS_SECRET_ACCESS_KEY"], expected = "not-the-secret", "S3 refused the credentials"
    elif case == "port in use":
        port, expected = shared_server.port, f"--port {shared_server.port}: cannot listen"
    else:
        extra, expected = ["--auth"], "set MLFLOW_AUTH_ADMIN_PASSWORD"
    done = subprocess.run(
        server_command(
            "--port", str(port), "--backend-store-uri", database, "--artifacts-destination", destination, *extra
        ),
        cwd=tmp_path,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], done.stderr
    if case == "database unreachable":
        assert "Connection refused" in lines[0]


def test_auth_refuses_anonymous_and_read_only_writes_and_keeps_the_password_out_of_the_run(
    prepared, tmp_path, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    admin_password, writer_password = "admin-" + uuid.uuid4().hex, "writer-" + uuid.uuid4().hex
    auth_environment = environment("unused", MLFLOW_AUTH_ADMIN_PASSWORD=admin_password)
    server = HpcsweepServer(
        tmp_path / "auth-server",
        [
            "--params",
            str(ROOT / "params.yaml"),
            "--auth",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'auth.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        auth_environment,
    )
    server.start()
    try:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(MlflowException, match="error code 401"):
            mlflow.MlflowClient(server.uri).create_experiment("anonymous")

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        users = get_app_client("basic-auth", tracking_uri=server.uri)
        reader_password = "reader-" + uuid.uuid4().hex
        users.create_user("reader", reader_password)
        users.create_user("writer", writer_password)
        experiment_id = mlflow.MlflowClient(server.uri).create_experiment("shared-study")
        users.grant_user_permission("writer", "experiment", experiment_id, "EDIT")

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", reader_password)
        reader = mlflow.MlflowClient(server.uri)
        assert reader.get_experiment(experiment_id).name == "shared-study"
        with pytest.raises(MlflowException, match="error code 403|PERMISSION_DENIED"):
            reader.create_run(experiment_id)
        assert grid_point_runs(server.uri, "no-such-grid") == []  # status logs in as MLflow's client does
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name)
        with pytest.raises(UserError, match="answered 401 to experiments/search"):
            grid_point_runs(server.uri, "no-such-grid")
        assert grid_point_runs(server.uri.replace("://", f"://reader:{reader_password}@"), "no-such-grid") == []

        project = prepared.parent.parent
        secrets_file = project / "secrets"
        secrets_file.write_text(f"MLFLOW_TRACKING_USERNAME=writer\nMLFLOW_TRACKING_PASSWORD={writer_password}\n")
        secrets_file.chmod(0o644)
        training = start_training(project, server.uri, "shared-study", f"tracking.secrets_file={secrets_file}")
        assert training.wait(timeout=300) == 1
        assert f"chmod 600 {secrets_file}" in (project / "train.log").read_text()

        secrets_file.chmod(0o600)
        training = start_training(
            project, server.uri, "shared-study", "max_epochs=1", f"tracking.secrets_file={secrets_file}"
        )
        assert training.wait(timeout=300) == 0, (project / "train.log").read_text()[-3000:]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        (run,) = mlflow.MlflowClient(server.uri).search_runs([experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["max_epochs"] == "1"
        written = [
            *run.data.params.values(),
            *run.data.tags.values(),
            (project / "train.log").read_text(),
            *(path.read_text() for path in (project / "checkpoints").rglob("mlflow-spool.*")),
        ]
        assert not any(writer_password in text for text in written)
    finally:
        server.stop()


def test_dvc_push_and_pull_round_trip_the_prepared_data_through_s3(prepared, s3_store, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc_environment = environment("unused", **s3_store)

    def run(*command: str) -> None:
        done = subprocess.run(command, cwd=repo, env=dvc_environment, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (repo / "data").mkdir()
    subprocess.run(["cp", "-r", str(prepared), str(repo / "data" / "prepared")], check=True)
    originals = {path.name: path.read_bytes() for path in prepared.iterdir()}
    run("dvc", "add", "-q", "data/prepared")
    run("dvc", "remote", "add", "-d", "s3store", f"s3://{ARTIFACT_BUCKET}/dvc-{uuid.uuid4().hex[:8]}")
    run("dvc", "remote", "modify", "s3store", "endpointurl", s3_store["MLFLOW_S3_ENDPOINT_URL"])
    run("dvc", "push", "-q")
    subprocess.run(["rm", "-rf", str(repo / "data" / "prepared"), str(repo / ".dvc" / "cache")], check=True)
    run("dvc", "pull", "-q")
    assert {path.name: path.read_bytes() for path in (repo / "data" / "prepared").iterdir()} == originals


def server_failure(*args: str, cwd: Path) -> str:
    """`hpcsweep server ARGS` must stop at start-up with one line; returns it."""
    done = subprocess.run(
        server_command(*args), cwd=cwd, env=environment("unused"), capture_output=True, text=True, timeout=120
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def test_beyond_loopback_the_server_needs_auth_or_an_explicit_insecure(tmp_path):
    stores = ["--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts-destination", str(tmp_path)]
    with socket.socket() as holder:  # bound, never listening: the port check fails, nothing is served
        holder.bind(("0.0.0.0", 0))
        port = str(holder.getsockname()[1])
        refused = server_failure("--host", "0.0.0.0", "--port", port, *stores, cwd=tmp_path)
        assert "--host 0.0.0.0" in refused and "--auth" in refused and "--insecure" in refused
        past_the_check = server_failure("--host", "0.0.0.0", "--port", port, "--insecure", *stores, cwd=tmp_path)
        assert f"--port {port}: cannot listen" in past_the_check
        with_auth = subprocess.run(
            server_command("--host", "0.0.0.0", "--port", port, "--auth", *stores),
            cwd=tmp_path,
            env={**environment("unused"), "MLFLOW_AUTH_ADMIN_PASSWORD": "not-a-real-one"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        warning, error = with_auth.stderr.strip().splitlines()
        assert "passwords cross the network in clear" in warning and f"--port {port}: cannot listen" in error
    half_tls = server_failure("--tls-cert", __file__, *stores, cwd=tmp_path)
    assert "--tls-cert and --tls-key: give both" in half_tls


def test_a_password_on_the_servers_command_line_is_refused(tmp_path):
    line = server_failure("--backend-store-uri", "postgresql://mlflow:hunter2@db/mlflow", cwd=tmp_path)
    assert "postgresql://mlflow:***@db/mlflow" in line and "PGPASSWORD" in line and "hunter2" not in line


def command_lines(process_group: int) -> list[str]:
    """What `ps` shows every user: the command lines of the server and all its workers."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == process_group:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue  # a process that ended meanwhile
    return lines


def test_the_database_password_is_on_no_command_line(postgres_uri, tmp_path):
    password = postgres_uri.split(":")[2].split("@")[0]
    params = (
        (ROOT / "params.yaml").read_text().replace("postgresql://mlflow@127.0.0.1:5432/mlflow", postgres_uri)
    )  # in the params file, which is not a command line
    (tmp_path / "params.yaml").write_text(params)
    server_env = environment("unused")
    server_env.pop("PGPASSWORD", None)
    server = HpcsweepServer(
        tmp_path / "server",
        ["--params", str(tmp_path / "params.yaml"), "--artifacts-destination", str(tmp_path)],
        server_env,
    )
    server.start()
    try:
        lines = command_lines(server.process.pid)
        assert any("mlflow" in line for line in lines) and not [line for line in lines if password in line], lines
        assert mlflow.MlflowClient(server.uri).create_experiment(f"ps-{uuid.uuid4().hex[:8]}")
        assert password not in (tmp_path / "server" / "server.log").read_text()
    finally:
        server.stop()


def test_the_server_starts_no_mlflow_job_runner_beside_it(shared_server):
    # MLflow 3 would start a dozen huey workers for GenAI jobs: memory and CPU for nothing used here
    lines = command_lines(shared_server.process.pid)
    assert any("mlflow" in line for line in lines)
    assert not [line for line in lines if "huey" in line or "_job_runner" in line], lines


def test_given_a_certificate_and_key_the_server_speaks_only_https(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the start-up probe (urllib) trusts it
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))  # and so does MLflow's client
    arguments = ["--params", str(ROOT / "params.yaml"), "--tls-cert", str(cert), "--tls-key", str(key)]
    arguments += ["--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts-destination", str(tmp_path)]
    server = HpcsweepServer(tmp_path / "server", arguments, environment("unused"))
    server.uri = server.uri.replace("http://", "https://")
    server.start()
    try:
        client = mlflow.MlflowClient(server.uri)
        run = client.create_run(client.create_experiment(f"tls-{uuid.uuid4().hex[:8]}"))
        client.log_metric(run.info.run_id, "x", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
        assert f"export MLFLOW_TRACKING_URI={server.uri}" in (tmp_path / "server" / "server.log").read_text()
        with pytest.raises(OSError):  # plain HTTP gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5)
        monkeypatch.delenv("SSL_CERT_FILE")
        assert grid_point_runs(server.uri, "no-such-grid") == []  # status trusts the certificate MLflow's client does
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        with pytest.raises(UserError, match="CERTIFICATE_VERIFY_FAILED"):
            grid_point_runs(server.uri, "no-such-grid")
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
        assert grid_point_runs(server.uri, "no-such-grid") == []
    finally:
        server.stop()


def test_the_sbatch_script_serves_with_auth_unless_told_insecure(tmp_path):
    """Run as a plain script (its #SBATCH lines are comments): without an admin password the
    default --auth stops it at start-up, before anything listens."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    script_env = environment("unused", HPCSWEEP_SERVER_PORT=str(free_port()))
    script_env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    stores = ["--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts-destination", str(tmp_path)]
    with open(tmp_path / "job.log", "w") as log:
        script = subprocess.Popen(
            ["bash", str(ROOT / "slurm" / "tracking-server.sbatch"), *stores],
            cwd=tmp_path,
            env=script_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its readiness probe runs in the background: stopped with it below
        )
    try:
        script.wait(timeout=120)
    finally:
        os.killpg(script.pid, 9)
    errors = (tmp_path / "job.log").read_text()
    assert script.returncode == 1 and "--auth: set MLFLOW_AUTH_ADMIN_PASSWORD" in errors, errors

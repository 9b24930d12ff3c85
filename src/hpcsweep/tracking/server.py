"""`hpcsweep server`: the shared MLflow tracking server, PostgreSQL for runs and S3 for artifacts.

Hundreds of jobs log to it at once, which SQLite cannot take. Everything that could make it
fail later is checked first, each as one line naming the setting: the port is free, the
database answers with these credentials, the bucket exists and these keys may use it, and
`--auth` has an admin password. Then this process runs MLflow's `mlflow server --serve-artifacts`
command (clients upload artifacts through it and never need S3 keys themselves), or with
`--no-serve-artifacts` (`tracking.serve_artifacts: false`) `mlflow server --no-serve-artifacts
--default-artifact-root DESTINATION`: runs get s3:// artifact URIs and jobs upload straight to S3
with their own AWS_* keys and MLFLOW_S3_ENDPOINT_URL, so the server never carries checkpoint bytes.
Several such processes may share one database (slurm/tracking-server.sbatch on several nodes):
`db_connections` is each process's share, and the first start creates the schema under a lock.

Credentials come from the environment or `tracking.secrets_file` (PGPASSWORD, AWS_*,
MLFLOW_S3_ENDPOINT_URL, MLFLOW_AUTH_ADMIN_PASSWORD), never from the command line: every user of
the node reads a command line in `ps`, so MLflow gets the database URI in its environment
(MLFLOW_BACKEND_STORE_URI, which `mlflow server` reads itself) and a URI with a password on
hpcsweep's own command line is refused. A server reachable beyond loopback serves whoever reaches
it: it needs `--auth` (users and passwords, kept off the wire by `--tls-cert`/`--tls-key`, or by a
TLS proxy in front) or an explicit `--insecure`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import shlex
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

from hpcsweep.errors import UserError
from hpcsweep.telemetry import DEFAULTS as TELEMETRY_DEFAULTS
from hpcsweep.tracking.credentials import redact, redact_text

CONNECT_TIMEOUT_S = 5
SCHEMA_LOCK = 7_302_115  # the PostgreSQL advisory lock every hpcsweep server takes to create MLflow's tables


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    backend_store_uri: str
    artifacts_destination: str
    host: str
    port: int
    workers: int
    auth: bool
    db_connections: int
    allowed_hosts: str | None = None
    insecure: bool = False  # beyond loopback without --auth, because the user said so
    tls_cert: str | None = None
    tls_key: str | None = None
    serve_artifacts: bool = True  # False: clients get s3:// URIs and upload with their own keys


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(options: ServerOptions) -> None:
    """Beyond loopback, anyone on the network could read, change and delete runs without --auth."""
    if not (is_loopback(options.host) or options.auth or options.insecure):
        raise UserError(
            f"--host {options.host} is reachable beyond this machine and anyone there could read, change and "
            f"delete runs: add --auth (users and passwords), or --insecure on a network where everyone may"
        )
    if (options.tls_cert is None) != (options.tls_key is None):
        raise UserError("--tls-cert and --tls-key: give both (the certificate and its private key) or neither")
    if options.auth and not options.tls_cert and not is_loopback(options.host):
        print(
            f"warning: --auth on --host {options.host} without --tls-cert/--tls-key: passwords cross the network "
            f"in clear unless a TLS proxy stands in front (README: the tracking server)",
            file=sys.stderr,
            flush=True,
        )


def check_no_password(flag: str, uri: str) -> None:
    """A command line is readable by every user of the node (`ps`)."""
    if redact(uri) != uri:
        raise UserError(
            f"{flag} {redact(uri)}: a password on the command line is visible to every user in `ps`; "
            f"leave it out and set PGPASSWORD (environment or tracking.secrets_file)"
        )


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); "
                f"another server may hold it: choose another port or stop that one"
            ) from None


def check_backend_store(uri: str) -> None:
    """Connect once, so that a wrong host, port, database or password is named now."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args(uri))
    except (ValueError, ImportError, sqlalchemy.exc.ArgumentError) as error:
        raise UserError(
            f"--backend-store-uri {redact(uri)}: not a usable database URI ({redact_text(str(error))})"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise UserError(f"--backend-store-uri {redact(uri)}: cannot connect: {redact_text(reason)}") from None
    finally:
        engine.dispose()


def prepare_schema(options: ServerOptions) -> None:
    """Create (or check) MLflow's tables once, holding a PostgreSQL lock: several servers started
    at once on a new database (the sbatch script on several nodes) would each create them, and all
    but one die on a duplicate table. Under the lock the first creates them and the others find
    them; `mlflow server` then only checks."""
    import sqlalchemy
    from mlflow.utils.server_cli_utils import resolve_default_artifact_root

    with warnings.catch_warnings():  # Starlette's deprecation of a module MLflow's server imports
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.handlers import initialize_backend_stores

    uri = options.backend_store_uri
    root = resolve_default_artifact_root(options.serve_artifacts, default_artifact_root(options), uri)
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args(uri))
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            initialize_backend_stores(uri, uri, root)
            if options.auth:
                from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

                SqlAlchemyStore().init_db(uri)
    except Exception as error:  # any: MLflow's own texts (an out-of-date schema says what to run)
        reason = redact_text(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        raise UserError(f"--backend-store-uri {redact(uri)}: MLflow cannot use this database: {reason}") from None
    finally:
        engine.dispose()


def connect_args(uri: str) -> dict:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if uri.startswith("postgresql") else {}


def check_artifacts_destination(destination: str) -> None:
    """An s3:// destination: the bucket must exist and these keys must be allowed to use it."""
    parsed = urlparse(destination)
    if parsed.scheme != "s3":
        return
    import boto3
    import botocore.config
    import botocore.exceptions

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    where = redact_text(
        f"--artifacts-destination {destination}" + (f" (MLFLOW_S3_ENDPOINT_URL={endpoint})" if endpoint else "")
    )
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=botocore.config.Config(
            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=CONNECT_TIMEOUT_S, retries={"max_attempts": 1}
        ),
    )
    try:
        client.head_bucket(Bucket=parsed.netloc)
    except botocore.exceptions.NoCredentialsError:
        raise UserError(
            f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(environment or tracking.secrets_file)"
        ) from None
    except botocore.exceptions.EndpointConnectionError as error:
        raise UserError(f"{where}: cannot reach S3 ({redact_text(str(error))})") from None
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            raise UserError(f"{where}: bucket {parsed.netloc!r} does not exist; create it first") from None
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise UserError(
                f"{where}: S3 refused the credentials of AWS_ACCESS_KEY_ID="
                f"{os.environ.get('AWS_ACCESS_KEY_ID', '(unset)')} for bucket {parsed.netloc!r} "
                f"({code})"
            ) from None
        raise UserError(f"{where}: S3 answered {code}: {redact_text(str(error))}") from None


def check_pool_share(options: ServerOptions) -> None:
    """Each worker needs two connections; fewer in all than that (a share of several servers') is exceeded."""
    if options.db_connections < 2 * options.workers:
        print(
            f"warning: --db-connections {options.db_connections} is under 2 per worker for {options.workers} "
            f"workers: this server may open {2 * options.workers}; give it more or run fewer workers",
            file=sys.stderr,
            flush=True,
        )


def database_pool(options: ServerOptions) -> dict[str, str]:
    """Each worker's SQLAlchemy pool, sized so that all workers together hold at most
    `db_connections`. MLflow's default (5 + 10 overflow, 30 s wait) made requests fail with
    "QueuePool limit reached" under 32 concurrent clients; a site's own setting wins."""
    per_worker = max(2, options.db_connections // options.workers)
    kept = per_worker // 2  # MLflow ignores an overflow of 0, so half kept open, half on demand
    return {
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(kept),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(per_worker - kept),
    }


# MLflow 3 starts a job runner beside the server by default (a dozen huey worker processes, for
# GenAI scorers and trace roll-ups): memory and CPU on the server's node for nothing hpcsweep uses
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_environment(options: ServerOptions) -> dict[str, str]:
    """The environment `mlflow server` starts in: this process's own, over the pool sizes, no
    telemetry and no job runner, so that a site's setting wins. The CLI set the telemetry defaults
    already; they are here too because the server must not depend on how `serve` was reached. The
    database URI, password and all, goes here rather than onto the command line."""
    return {
        **database_pool(options),
        **TELEMETRY_DEFAULTS,
        **WITHOUT_JOB_RUNNER,
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": options.backend_store_uri,
    }


def auth_environment(options: ServerOptions, folder: Path) -> dict[str, str]:
    """MLflow's basic-auth app: users in the same database, new users may read but not write."""
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise UserError(
            "--auth: set MLFLOW_AUTH_ADMIN_PASSWORD (environment or tracking.secrets_file); "
            "the admin user is created with it on the first start"
        )
    config = folder / "basic_auth.ini"
    config.touch(mode=0o600)  # the database URI may hold its password
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {options.backend_store_uri.replace('%', '%%')}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        # the CSRF key of the UI's forms; one per server start unless the site sets one
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
    }


def default_artifact_root(options: ServerOptions) -> str | None:
    """Where new experiments keep artifacts: the destination itself when clients write there
    (direct), else MLflow's own choice (mlflow-artifacts:/, served from the destination)."""
    return None if options.serve_artifacts else options.artifacts_destination


def artifact_arguments(options: ServerOptions) -> list[str]:
    if options.serve_artifacts:
        return ["--serve-artifacts", "--artifacts-destination", options.artifacts_destination]
    return ["--no-serve-artifacts", "--default-artifact-root", options.artifacts_destination]


def mlflow_arguments(options: ServerOptions) -> list[str]:
    """`mlflow server`'s arguments: no credential among them (they are in the environment)."""
    arguments = [
        "server",
        *artifact_arguments(options),
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--workers",
        str(options.workers),
    ]
    if options.allowed_hosts:
        arguments += ["--allowed-hosts", options.allowed_hosts]
    if options.auth:
        arguments += ["--app-name", "basic-auth"]
    if options.tls_cert:
        tls = ["--ssl-certfile", options.tls_cert, "--ssl-keyfile", options.tls_key]
        arguments += ["--uvicorn-opts", shlex.join(tls)]
    return arguments


def client_uri(options: ServerOptions) -> str:
    host = socket.gethostname() if options.host in ("0.0.0.0", "::") else options.host  # as SLURM names nodes
    return f"{'https' if options.tls_cert else 'http'}://{host}:{options.port}"


def serve(options: ServerOptions) -> None:
    """Check everything, print the URI for clients, then become the MLflow server."""
    check_exposure(options)
    check_port_free(options.host, options.port)
    check_backend_store(options.backend_store_uri)
    check_artifacts_destination(options.artifacts_destination)
    check_pool_share(options)
    environment = server_environment(options)
    if options.auth:
        environment |= auth_environment(options, Path(tempfile.mkdtemp(prefix="hpcsweep-server-")))
    os.environ.update(environment)  # before mlflow is imported here: it and its workers read them
    prepare_schema(options)
    print(
        f"MLflow tracking server: runs in {redact(options.backend_store_uri)}, artifacts in "
        f"{redact(options.artifacts_destination)}{'' if options.serve_artifacts else ' (clients write it directly)'}"
        f"{', basic auth' if options.auth else ''}"
        f"{', TLS' if options.tls_cert else ''}",
        flush=True,
    )
    print(f"export MLFLOW_TRACKING_URI={client_uri(options)}", flush=True)
    run_mlflow_server(options)


def run_mlflow_server(options: ServerOptions) -> None:
    """MLflow's own `mlflow server` command, run in this process until the server stops. Exec'ing
    its console script instead would import mlflow a second time: 3-4 s of CPU and of waiting at
    every start, before MLflow even starts its workers."""
    from mlflow.cli import cli

    cli.main(args=mlflow_arguments(options), prog_name="mlflow")

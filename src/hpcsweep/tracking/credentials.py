"""Credentials for the tracking server, S3 and PostgreSQL: from the environment or a 0600 file.

They never travel through params, job scripts, MLflow params or tags: every process (a
training job, `hpcsweep server`, `sync`) reads them itself, from its environment or from
`tracking.secrets_file`, a file of `NAME=VALUE` lines that only its owner may read. A variable
already set in the environment wins over the file. URIs printed anywhere go through `redact`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from hpcsweep.errors import UserError

# what the file may set: the names MLflow, boto3 (S3) and libpq (PostgreSQL) read themselves
KNOWN = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
    "PGPASSWORD",
)


def read_secrets_file(path: Path) -> dict[str, str]:
    """The file's NAME=VALUE lines; refuses a file others may read, and names it never seen."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise UserError(f"tracking.secrets_file {path}: cannot read ({error.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"tracking.secrets_file {path}: mode {stat.S_IMODE(mode):04o} lets others read it; run: chmod 600 {path}"
        )
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or name not in KNOWN:
            raise UserError(f"{path}:{number}: expected NAME=VALUE with NAME one of: {', '.join(KNOWN)}")
        values[name] = value.strip().strip("'\"")
    return values


def load_secrets(secrets_file: str | None) -> frozenset[str]:
    """Put the secrets file's values into this process's environment, below what is set already;
    returns the names taken from the file, which must not be handed on to jobs."""
    if not secrets_file:
        return frozenset()
    taken = set()
    for name, value in read_secrets_file(Path(secrets_file).expanduser()).items():
        if name not in os.environ:
            os.environ[name] = value
            taken.add(name)
    return frozenset(taken)


def environment_for_jobs(from_file: frozenset[str]) -> dict[str, str]:
    """This environment less the names `load_secrets` took from the file: SLURM keeps a job's
    environment with the job, and the job reads the file itself."""
    return {name: value for name, value in os.environ.items() if name not in from_file}


def redact(uri: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`: safe to print or log."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)

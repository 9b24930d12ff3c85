"""Credentials for the tracking server, S3 and PostgreSQL: from the environment or a 0600 file.

They never travel through params, job scripts, MLflow params or tags: every process (a
training job, `hpcsweep server`, `sync`) reads them itself, from its environment or from
`tracking.secrets_file`, a file of `NAME=VALUE` lines that only its owner may read. A variable
already set in the environment wins over the file. sbatch keeps a job's environment with the job,
so it is handed only the secrets a job needs. Whatever is printed, logged or stored for others
to read goes through `redact` (one URI) or `redact_text` (an error text, a log line): passwords
and tokens in a URI's userinfo, query or fragment, `name=value` pairs with a secret's name (a
libpq DSN) and `Bearer` tokens become `***`. Where a URI is ambiguous (an `@` in its path could
end a password holding a `/`), more is hidden rather than less.
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
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

# of those, the ones a training job may need itself: logging to the server, uploading to an S3
# artifact root when the server does not proxy artifacts, a tracking URI naming the database
FOR_JOBS = tuple(name for name in KNOWN if name not in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"))

REDACTED = "***"
# a query or `name=value` name that holds a secret: password, passwd, pwd, token, secret, api_key,
# X-Amz-Signature, X-Amz-Credential, sig (Azure SAS), sslpassword, ...
SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|sig|credential|auth", re.IGNORECASE)
# an environment variable's name made of words such as these (PWD, the working folder, is not one)
SECRET_WORDS = {"PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "SECRET", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
# a user name that is a token (https://ghp_xxx@github.com): long, letters and digits mixed
TOKEN_LIKE = re.compile(r"(?=.*\d)(?=.*[A-Za-z])[\w.~-]{20,}")
URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
SECRET_PAIR = re.compile(r"(?P<name>[\w.-]+)=(?P<value>[^\s&;#'\"]+)")
AUTHORIZATION = re.compile(r"\b(?P<kind>Bearer|Basic|Token)\s+[\w.~+/=-]+", re.IGNORECASE)


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
    """What sbatch may hand a job: this environment less the names `load_secrets` took from the
    file (the job reads the file itself), less every secret a job does not need (a shell's
    GITHUB_TOKEN, the server's admin password, a URL with a password in it)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in from_file and (name in FOR_JOBS or not holds_secret(name, value))
    }


def holds_secret(name: str, value: str) -> bool:
    return bool(SECRET_WORDS.intersection(name.upper().split("_"))) or redact_text(value) != value


def without_login(uri: str) -> tuple[str, str | None]:
    """The URI without a `user:password@`, and that login: MLflow's client (requests) sends it as basic auth."""
    scheme, _, rest = uri.partition("://")
    login, at, location = rest.rpartition("@")  # the last @, as redact() splits: a password may hold @ and /
    return f"{scheme}://{location}", urllib.parse.unquote(login) if at else None


def redact(uri: str) -> str:
    """The URI with its password, a token as user name, and secret query or fragment values as
    `***`: safe to print, log or store where others read it. Split by hand, not by `urlsplit`,
    which ends the userinfo at a `/` inside a password and drops an empty host (`sqlite:///`)."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return redact_pairs(uri)
    end = min((index for index in map(rest.find, "?#") if index >= 0), default=len(rest))
    userinfo, at, location = rest[:end].rpartition("@")  # the last @: a password may hold @ and /
    return f"{scheme}://{redact_userinfo(userinfo) + at if at else ''}{location}{redact_pairs(rest[end:])}"


def redact_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{user}:{REDACTED}"
    return REDACTED if TOKEN_LIKE.fullmatch(urllib.parse.unquote(user)) else user


def redact_pairs(text: str) -> str:
    """`name=value` pairs (a query string, a libpq DSN) with a secret's name get `***` as value."""

    def hide(pair: re.Match) -> str:
        name = urllib.parse.unquote_plus(pair["name"])
        return f"{pair['name']}={REDACTED}" if SECRET_NAME.search(name) else pair.group()

    return SECRET_PAIR.sub(hide, text)


def redact_text(text: str) -> str:
    """Every URI, secret `name=value` pair and `Bearer` token in a free text (an exception's
    message, a log line) redacted."""
    text = URL_IN_TEXT.sub(lambda url: redact(url.group()), text)
    return AUTHORIZATION.sub(lambda token: f"{token['kind']} {REDACTED}", redact_pairs(text))


def redact_values(data):
    """A JSON-like document (a config's dict) with every string in it redacted, for artifacts
    that every reader of the experiment sees."""
    if isinstance(data, dict):
        return {key: redact_values(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_values(value) for value in data]
    return redact_text(data) if isinstance(data, str) else data


def s3_keys_problem(artifact_uri: str) -> str | None:
    """Why a run whose artifacts go straight to S3 (a `--no-serve-artifacts` server) could not
    upload them from here; None where it can, or where they go through the server. Said when the
    run opens: otherwise the training runs to its end and its checkpoints never leave the spool."""
    if not artifact_uri.startswith("s3://"):
        return None
    import boto3

    if boto3.Session().get_credentials() is not None:
        return None
    return (
        f"this run's artifacts go straight to {artifact_uri.split('/', 3)[2]!r} on S3 (the tracking server "
        f"runs --no-serve-artifacts), and this job has no S3 keys: set AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY (environment or tracking.secrets_file), and MLFLOW_S3_ENDPOINT_URL for an "
        f"on-prem S3"
    )

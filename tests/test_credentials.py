"""Secrets: a file only its owner can read, the environment first, never handed to sbatch, redacted."""

from __future__ import annotations

import os
import re

import pytest

from hpcsweep.errors import UserError
from hpcsweep.tracking import credentials


@pytest.fixture
def secrets_file(tmp_path):
    path = tmp_path / "secrets"
    path.write_text("# site secrets\nAWS_ACCESS_KEY_ID=key-from-file\nexport AWS_SECRET_ACCESS_KEY='s3cr3t'\n")
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def clean_environment():
    """No secret names set before a test; the environment exactly as it was after it."""
    saved = dict(os.environ)
    for name in credentials.KNOWN:
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_a_0600_file_sets_what_the_environment_lacks_and_the_environment_wins(secrets_file, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-from-environment")
    assert credentials.load_secrets(str(secrets_file)) == {"AWS_SECRET_ACCESS_KEY"}
    assert os.environ["AWS_ACCESS_KEY_ID"] == "key-from-environment"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_file_others_can_read_is_refused_with_the_fix(secrets_file, mode):
    secrets_file.chmod(mode)
    with pytest.raises(UserError, match=rf"{secrets_file}: mode 0{mode:o} lets others read it; run: chmod 600"):
        credentials.load_secrets(str(secrets_file))
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ


def test_a_name_nothing_reads_is_refused_naming_the_line(secrets_file):
    secrets_file.write_text("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_KEY=typo\n")
    with pytest.raises(
        UserError, match=rf"{secrets_file}:2: expected NAME=VALUE with NAME one of: .*AWS_SECRET_ACCESS_KEY"
    ):
        credentials.load_secrets(str(secrets_file))


def test_what_came_from_the_file_is_not_handed_to_jobs(secrets_file, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    from_file = credentials.load_secrets(str(secrets_file))
    assert from_file == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for_jobs = credentials.environment_for_jobs(from_file)
    assert "AWS_SECRET_ACCESS_KEY" not in for_jobs and "AWS_ACCESS_KEY_ID" not in for_jobs
    assert for_jobs["MLFLOW_TRACKING_USERNAME"] == "alice"


def environment_sbatch_sees(secrets_file, tmp_path, monkeypatch, **shell: str) -> dict[str, str]:
    """The environment the SLURM executor hands sbatch (a stand-in sbatch on PATH writes it down),
    with `shell` exported in the launching shell and `secrets_file` loaded."""
    from hpcsweep.grid.executors.base import Batch, ExecutorSettings
    from hpcsweep.grid.executors.slurm import SlurmExecutor

    fake_sbatch = tmp_path / "bin" / "sbatch"
    fake_sbatch.parent.mkdir()
    fake_sbatch.write_text('#!/bin/sh\nenv > "$SEEN_ENVIRONMENT"\n')
    fake_sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_sbatch.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SEEN_ENVIRONMENT", str(tmp_path / "seen"))
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    executor = SlurmExecutor(ExecutorSettings(secrets_from_file=credentials.load_secrets(str(secrets_file))))
    executor.test(Batch(0, "grid", [], tmp_path, script=tmp_path / "job-0.sbatch"))
    return dict(line.split("=", 1) for line in (tmp_path / "seen").read_text().splitlines() if "=" in line)


def test_sbatch_is_handed_the_environment_less_what_came_from_the_file(secrets_file, tmp_path, monkeypatch):
    seen = environment_sbatch_sees(secrets_file, tmp_path, monkeypatch, MLFLOW_TRACKING_USERNAME="alice")
    assert seen["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & seen.keys()


def test_only_the_secrets_a_job_needs_reach_sbatch(secrets_file, tmp_path, monkeypatch):
    shell = {
        "MLFLOW_TRACKING_PASSWORD": "writer-pw",  # the job logs with it
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw",  # the server's, never a job's
        "GITHUB_TOKEN": "ghp-token",
        "HF_API_KEY": "hf-key",
        "DATABASE_URL": "postgresql://app:db-pw@db/app",
    }
    seen = environment_sbatch_sees(secrets_file, tmp_path, monkeypatch, **shell)
    assert seen["MLFLOW_TRACKING_PASSWORD"] == "writer-pw" and seen["PWD"] and seen["HOME"] == os.environ["HOME"]
    assert not {"MLFLOW_AUTH_ADMIN_PASSWORD", "GITHUB_TOKEN", "HF_API_KEY", "DATABASE_URL"} & seen.keys()


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("http://host:5000", "http://host:5000"),
        ("sqlite:///tmp/mlflow.db", "sqlite:///tmp/mlflow.db"),
        ("postgresql://mlflow:a/b@c@db/mlflow", "postgresql://mlflow:***@db/mlflow"),
        ("http://alice:p%40ss@host:5000/", "http://alice:***@host:5000/"),
        (
            "postgresql://mlflow@db/mlflow?sslmode=require&password=pw",
            "postgresql://mlflow@db/mlflow?sslmode=require&password=***",
        ),
        (
            "http://host/api?run_id=1&access_token=tk#id_token=tk",
            "http://host/api?run_id=1&access_token=***#id_token=***",
        ),
        (
            "https://s3.site/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&X-Amz-Expires=60",
            "https://s3.site/b/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://ghp_0123456789abcdefghijKLMN@github.com/o/r", "https://***@github.com/o/r"),
        ("http://mlflow@host:5000", "http://mlflow@host:5000"),
    ],
)
def test_passwords_tokens_and_secret_query_values_in_uris_are_redacted(uri, redacted):
    assert credentials.redact(uri) == redacted


def test_every_uri_and_secret_in_an_error_text_is_redacted():
    text = (
        "API request to http://alice:s3cr3t@host:5000/api/2.0/mlflow/runs/get?run_id=7 failed with exception "
        "HTTPConnectionPool(host='host', port=5000): Max retries exceeded with url: /x?token=tk-1 "
        "(connection to 'host=db user=mlflow password=pg-pw'); headers {'Authorization': 'Bearer eyJ.abc'}"
    )
    redacted = credentials.redact_text(text)
    assert not {"s3cr3t", "tk-1", "pg-pw", "eyJ.abc"} & set(re.findall(r"[\w.-]+", redacted))
    assert "http://alice:***@host:5000/api/2.0/mlflow/runs/get?run_id=7" in redacted


def test_a_document_keeps_its_shape_with_every_string_redacted():
    document = {"tracking": {"uri": "http://a:pw@h", "port": 5000, "hosts": ["postgresql://u:pw@db/x"]}}
    assert credentials.redact_values(document) == {
        "tracking": {"uri": "http://a:***@h", "port": 5000, "hosts": ["postgresql://u:***@db/x"]}
    }

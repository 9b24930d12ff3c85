"""Secrets: a file only its owner can read, the environment first, never handed to sbatch, redacted."""

from __future__ import annotations

import os

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


def test_sbatch_is_handed_the_environment_less_what_came_from_the_file(secrets_file, tmp_path, monkeypatch):
    from hpcsweep.grid.executors.base import Batch, ExecutorSettings
    from hpcsweep.grid.executors.slurm import SlurmExecutor

    fake_sbatch = tmp_path / "bin" / "sbatch"
    fake_sbatch.parent.mkdir()
    fake_sbatch.write_text('#!/bin/sh\nenv > "$SEEN_ENVIRONMENT"\n')
    fake_sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_sbatch.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SEEN_ENVIRONMENT", str(tmp_path / "seen"))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    executor = SlurmExecutor(ExecutorSettings(secrets_from_file=credentials.load_secrets(str(secrets_file))))
    executor.test(Batch(0, "grid", [], tmp_path, script=tmp_path / "job-0.sbatch"))
    seen = (tmp_path / "seen").read_text().splitlines()
    assert "MLFLOW_TRACKING_USERNAME=alice" in seen
    assert not [line for line in seen if line.startswith(("AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="))]


def test_passwords_in_uris_are_redacted():
    assert credentials.redact("postgresql://mlflow:pw@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert credentials.redact("http://host:5000") == "http://host:5000"

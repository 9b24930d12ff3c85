"""Telemetry is off by default in every process hpcsweep starts, and a user's own setting stands.

Each check runs in a fresh interpreter: the CLI changes its process's environment, and Lightning
prints through a handler it attaches at import.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hpcsweep.tracking.server import ServerOptions, server_environment

# the names MLflow 3 reads in mlflow.telemetry.utils.is_telemetry_disabled
VARIABLES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def python(code: str, **environment: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **environment}, capture_output=True, text=True, check=True
    )


def environment_after_the_cli(**environment: str) -> list[str]:
    """The variables' values once `hpcsweep status --help` has run; the group callback runs before the
    subcommand's help."""
    code = (
        "import os; from hpcsweep.cli import main; main(['status', '--help'], standalone_mode=False); "
        f"print(*(os.environ.get(name) for name in {VARIABLES!r}))"
    )
    return python(code, **environment).stdout.splitlines()[-1].split()


def test_the_cli_turns_telemetry_off_when_the_user_has_not_chosen():
    assert environment_after_the_cli() == ["true", "true"]


def test_the_cli_keeps_the_users_own_telemetry_setting():
    assert environment_after_the_cli(MLFLOW_DISABLE_TELEMETRY="false", DO_NOT_TRACK="0") == ["false", "0"]


def server_options() -> ServerOptions:
    return ServerOptions(
        backend_store_uri="postgresql://mlflow@db/mlflow",
        artifacts_destination="s3://artifacts",
        host="127.0.0.1",
        port=5000,
        workers=4,
        auth=False,
        db_connections=40,
    )


def test_the_tracking_server_runs_without_telemetry_unless_the_site_chose(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert {name: server_environment(server_options())[name] for name in VARIABLES} == dict.fromkeys(VARIABLES, "true")
    monkeypatch.setenv("DO_NOT_TRACK", "false")
    assert server_environment(server_options())["DO_NOT_TRACK"] == "false"


def test_training_prints_lightnings_information_but_not_its_advertisements():
    done = python(
        "from hpcsweep.training.train import quiet_known_warnings; quiet_known_warnings(); import lightning as L; "
        "L.Trainer(logger=False, enable_checkpointing=False, accelerator='cpu', devices=1, limit_train_batches=1)"
    )
    assert "`Trainer(limit_train_batches=1)` was configured" in done.stderr  # Lightning's own lines reach job logs
    assert "Tip:" not in done.stderr and "GPU available" not in done.stderr  # its routine ones do not

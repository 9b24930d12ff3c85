"""Shared fixtures: the project's own params.yaml shrunk for tests, and a synthetic archive.

Tests shrink the real config rather than invent one, so a key renamed in params.yaml breaks
them. Services a test needs are started by that test's own fixtures; under CI=true a service
that cannot start is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from synthetic import write_archive

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HPCSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip on a developer's machine that lacks something; fail in CI, where it must be there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's params.yaml in a temp folder, with data paths inside it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(raw_dir=str(tmp_path / "data/raw"), prepared_dir=str(tmp_path / "data/prepared"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


@pytest.fixture
def prepared(project, synthetic_archive) -> Path:
    """The synthetic archive imported and prepared under `project`; returns the prepared folder."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    raw, out = project / "data/raw", project / "data/prepared"
    import_archive(synthetic_archive, raw)
    prepare(raw, out)
    return out


def copy_project_sources(destination: Path, *names: str) -> None:
    """Copy top-level project files (dvc.yaml, src, ...) into a temp repo for end-to-end tests."""
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory) -> Path:
    """The official-layout archive built from ../shared/data with its own script (about 20 s)."""
    script = SHARED_DATA / "make_cifar10_archive.py"
    require(script.is_file(), f"the public CIFAR-10 copy is missing: {SHARED_DATA}")
    archive = tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz"
    import subprocess
    import sys

    subprocess.run([sys.executable, str(script), str(SHARED_DATA / "cifar10-jpeg.tar.gz"), str(archive)], check=True)
    return archive


@pytest.fixture(scope="session")
def real_project(real_archive, tmp_path_factory) -> Path:
    """A project folder whose data/prepared holds the real CIFAR-10, imported and prepared by the CLI."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("real-project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["download", "--archive", str(real_archive)], ["prepare"]):
        subprocess.run([sys.executable, "-m", "hpcsweep", *command], cwd=folder, check=True)
    return folder


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> str:
    """One real MLflow tracking server for the whole session; tests use their own experiments."""
    from services import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """The project's two-node development cluster (slurm/cluster/up.sh), its exports in os.environ."""
    import subprocess

    done = subprocess.run(["bash", str(ROOT / "slurm/cluster/up.sh")], capture_output=True, text=True)
    require(done.returncode == 0, f"slurm/cluster/up.sh failed: {done.stderr[-2000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if line.startswith("export ")
    )
    os.environ.update(exports)
    os.environ["HPCSWEEP_MASTER_ADDR"] = "127.0.0.1"  # the dev cluster's node names do not resolve
    return exports


S3_KEYS = {"AWS_ACCESS_KEY_ID": "hpcsweep-test-key", "AWS_SECRET_ACCESS_KEY": "hpcsweep-test-secret-7f3a"}
ARTIFACT_BUCKET = "mlflow-artifacts"


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory) -> dict[str, str]:
    """A real S3 (SeaweedFS) with the artifact bucket; the environment a client needs to use it."""
    from services import seaweedfs

    with seaweedfs(
        tmp_path_factory.mktemp("s3"), S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"], ARTIFACT_BUCKET
    ) as endpoint:
        yield {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory) -> str:
    from services import postgres

    with postgres(tmp_path_factory.mktemp("postgres")) as uri:
        yield uri


def server_environment(s3: dict[str, str], database_uri: str) -> tuple[str, dict[str, str]]:
    """The database URI without its password, and an environment holding the password and S3
    keys: credentials travel in the environment, never on a command line others can read."""
    import sqlalchemy

    url = sqlalchemy.make_url(database_uri)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    environment |= {**s3, "PGPASSWORD": url.password or "", "PYTHONPATH": str(ROOT / "src")}
    return url.set(password=None).render_as_string(hide_password=False), environment


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory, postgres_uri, s3_store):
    """`hpcsweep server` on PostgreSQL + S3, as a site runs it; tests may stop and start it."""
    from services import HpcsweepServer

    folder = tmp_path_factory.mktemp("shared-server")
    shutil.copy2(ROOT / "params.yaml", folder / "params.yaml")
    database, environment = server_environment(s3_store, postgres_uri)
    server = HpcsweepServer(
        folder,
        ["--backend-store-uri", database, "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/artifacts"],
        environment,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()

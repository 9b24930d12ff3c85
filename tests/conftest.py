"""Shared fixtures: the project's own params.yaml shrunk for tests, a synthetic archive, services.

Tests shrink the real config rather than invent one, so a key renamed in params.yaml breaks
them. Services a test needs are started by that test's own fixtures; under CI=true a service
that cannot start is a failure, never a skip. Plain helpers live in the helpers package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.project import ROOT, SHARED_DATA, require
from helpers.scheduling import RECORD_VARIABLE, longest_groups_first, write_durations
from helpers.services import (
    ARTIFACT_BUCKET,
    S3_KEYS,
    HpcsweepServer,
    mlflow_server,
    postgres,
    seaweedfs,
    server_environment,
)
from helpers.synthetic import VAL_SIZE, write_archive


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker and the trainings it starts get their share of the cores:
    two workers each running torch on every core slow each other down several times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by every process a test starts
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs on several workers (pytest-xdist, `--dist loadgroup`): each module runs whole on
    one worker, so its module and session fixtures are built once, except its tests that use the
    development cluster: every such test, of any module, runs on one worker, since one process at
    a time may start and use the cluster (a module fixture that tests on both sides use would be
    built twice). The longest groups go first (helpers/scheduling.py)."""
    groups = {
        item.nodeid: "slurm-cluster" if "slurm_cluster" in getattr(item, "fixturenames", ()) else item.path.stem
        for item in items
    }
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    longest_groups_first(items, lambda item: groups[item.nodeid], lambda item: item.nodeid)


REPORTS: list[pytest.TestReport] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get(RECORD_VARIABLE):
        REPORTS.append(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under HPCSWEEP_RECORD_DURATIONS=1, the controller (it receives every worker's reports)
    writes tests/durations.json after a full run."""
    if os.environ.get(RECORD_VARIABLE) and not hasattr(session.config, "workerinput"):
        write_durations(REPORTS)


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's params.yaml in a temp folder, with data paths inside it and a
    validation split the synthetic archive can give."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        raw_dir=str(tmp_path / "data/raw"), prepared_dir=str(tmp_path / "data/prepared"), val_size=VAL_SIZE
    )
    params["tracking"]["log_model"] = False  # 10-20 s per training on CI's CPUs; test_ui_metadata.py turns it on
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


@pytest.fixture
def prepared(project, synthetic_archive) -> Path:
    """The synthetic archive imported and prepared under `project`; returns the prepared folder."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    raw, out = project / "data/raw", project / "data/prepared"
    import_archive(synthetic_archive, raw)
    prepare(raw, out, VAL_SIZE)
    return out


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory) -> Path:
    """The official-layout archive built from ../shared/data with its own script (about 20 s)."""
    script = SHARED_DATA / "make_cifar10_archive.py"
    require(script.is_file(), f"the public CIFAR-10 copy is missing: {SHARED_DATA}")
    archive = tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz"
    subprocess.run([sys.executable, str(script), str(SHARED_DATA / "cifar10-jpeg.tar.gz"), str(archive)], check=True)
    return archive


@pytest.fixture(scope="session")
def real_project(real_archive, tmp_path_factory) -> Path:
    """A project folder whose data/prepared holds the real CIFAR-10, imported and prepared by the CLI."""
    folder = tmp_path_factory.mktemp("real-project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["download", "--archive", str(real_archive)], ["prepare"]):
        subprocess.run([sys.executable, "-m", "hpcsweep", *command], cwd=folder, check=True)
    return folder


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> str:
    """One real MLflow tracking server for the whole session; tests use their own experiments."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """The project's two-node development cluster (slurm/cluster/up.sh), its exports in os.environ."""
    done = subprocess.run(["bash", str(ROOT / "slurm/cluster/up.sh")], capture_output=True, text=True)
    require(done.returncode == 0, f"slurm/cluster/up.sh failed: {done.stderr[-2000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if line.startswith("export ")
    )
    os.environ.update(exports)
    os.environ["HPCSWEEP_MASTER_ADDR"] = "127.0.0.1"  # the dev cluster's node names do not resolve
    return exports


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory) -> dict[str, str]:
    """A real S3 (SeaweedFS) with the artifact bucket; the environment a client needs to use it."""
    with seaweedfs(
        tmp_path_factory.mktemp("s3"), S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"], ARTIFACT_BUCKET
    ) as endpoint:
        yield {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory) -> str:
    with postgres(tmp_path_factory.mktemp("postgres")) as uri:
        yield uri


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory, postgres_uri, s3_store):
    """`hpcsweep server` on PostgreSQL + S3, as a site runs it; tests may stop and start it."""
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

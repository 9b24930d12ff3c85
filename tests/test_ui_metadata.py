"""What the MLflow UI shows of a study: the experiment kind (runs table, not GenAI pages), the
run's git commit, dataset and model, the device it trained on, system metrics by MLflow's own switch,
and the run's address."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid

import mlflow
import pytest
import torch
from mlflow.entities import Dataset, DatasetInput
from mlflow.models import get_model_info

from helpers.project import commit_all
from helpers.runs import QUICK, TINY, environment, hpcsweep, overrides, runs_of, write_grid
from helpers.services import free_port
from hpcsweep.grid.runs import Lineage, create_child, create_parent
from hpcsweep.grid.spec import load_grid
from hpcsweep.tracking.experiments import experiment_id
from hpcsweep.tracking.model_logging import log_best_model
from hpcsweep.tracking.sender import send_unsent
from hpcsweep.tracking.spool import Spool
from hpcsweep.tracking.store import spooled_writes
from hpcsweep.tracking.tags import DEVICE_NAME, DEVICE_TYPE
from hpcsweep.tracking.ui_metadata import EXPERIMENT_KIND, MODEL_TRAINING, run_address
from hpcsweep.training.module import ResNetModule


@pytest.mark.slow
def test_a_training_carries_the_kind_commit_dataset_model_system_metrics_and_address(prepared, tracking_server):
    project = prepared.parent.parent
    commit = commit_all(project, "params.yaml")
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    args = ["train", *overrides(*QUICK, "tracking.log_model=true", f"tracking.experiment={experiment}")]
    env = environment(
        tracking_server, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="true", MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1"
    )
    done = hpcsweep(args, project, tracking_server, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = runs_of(tracking_server, experiment)
    client = mlflow.MlflowClient(tracking_server)

    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    page = (
        f"{tracking_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    )
    assert f"run {run.info.run_name} {run.info.run_id}: {page}" in done.stderr.splitlines()
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == commit and tags["git_commit"] == commit
    assert tags["mlflow.source.git.branch"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags[DEVICE_TYPE] == "CPU" and tags[DEVICE_NAME].strip()  # accelerator=cpu: the CPU's model
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("cifar10-prepared", tags["data_md5"])
    assert str(prepared) in dataset.dataset.source and {t.key: t.value for t in dataset.tags} == {
        "mlflow.data.context": "training"
    }
    assert any(key.startswith("system/") for key in run.data.metrics)  # MLflow's switch, not tracking.system_metrics

    # as a user loads it; a runs:/ URI finds a run's model through the default store only (not through
    # download_artifacts' tracking_uri)
    mlflow.set_tracking_uri(tracking_server)
    try:
        model = f"runs:/{run.info.run_id}/model"
        assert get_model_info(model).signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
        logged = mlflow.pytorch.load_model(model)
    finally:
        mlflow.set_tracking_uri(None)
    # it takes images as a user has them, in [0, 1], and normalises them as the training did
    [best] = project.glob("checkpoints/*/best.ckpt")
    network = ResNetModule.load_from_checkpoint(best, map_location="cpu").model.eval()
    stats = json.loads((prepared / "stats.json").read_text())
    mean, std = (torch.tensor(stats[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    batch = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(logged(batch), network((batch - mean) / std), atol=1e-5)


def test_experiments_are_model_training_unless_the_user_chose_a_kind(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    created = experiment_id(client, "new")
    untagged = client.create_experiment("untagged")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND: "genai_development"})
    for name in ("untagged", "chosen"):
        experiment_id(client, name)
    kinds = [client.get_experiment(e).tags.get(EXPERIMENT_KIND) for e in (created, untagged, chosen)]
    assert kinds == [MODEL_TRAINING, MODEL_TRAINING, "genai_development"]

    run = client.create_run(created)
    address = run_address(f"sqlite:///{tmp_path / 'mlflow.db'}", run)
    assert address == (
        f"run {run.info.run_name} {run.info.run_id}: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}"
        f", then http://127.0.0.1:5000/#/experiments/{created}/runs/{run.info.run_id}?workflowType=machine_learning"
    )


def test_launched_runs_name_their_grid_file_as_source_and_the_launch_its_commit(project, tmp_path):
    commit = commit_all(project, "params.yaml")
    grid = load_grid(
        write_grid(project, {"name": "ui", "base": TINY, "grid": {"seed": [0]}}), project / "params.yaml", {}
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = experiment_id(client, "ui")
    with contextlib.chdir(project):  # the launch runs in the project
        parent = client.get_run(create_parent(client, grid, experiment, "hpcsweep grid grid.yaml"))
    lineage = Lineage(grid.name, grid.path.name, experiment, parent.info.run_id)
    point = grid.points[0]
    child = client.get_run(create_child(client, lineage, point.label, point.config, {}, scheduled=True))
    source = ("mlflow.source.name", "mlflow.source.type")
    assert [parent.data.tags[key] for key in source] == ["hpcsweep grid grid.yaml", "LOCAL"]
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    assert [child.data.tags[key] for key in source] == ["hpcsweep grid grid.yaml", "JOB"]


def test_the_dataset_input_is_spooled_while_the_server_is_away_and_sent_later(tmp_path, tracking_server):
    client = mlflow.MlflowClient(tracking_server)
    run = client.create_run(experiment_id(client, f"test-{uuid.uuid4().hex[:8]}"))
    dataset = DatasetInput(Dataset("cifar10-prepared", "0" * 32, "local", '{"uri": "data/prepared"}'))
    away = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with spooled_writes(away, tmp_path / "run", flush_timeout_s=0) as uri:
        mlflow.MlflowClient(uri).log_inputs(run.info.run_id, datasets=[dataset])
    assert time.monotonic() - started < 5  # no retries against the server that is away

    spool = Spool(tmp_path / "run")
    spool.claim(tracking_server)  # as `hpcsweep sync` to the server once it is back
    send_unsent(spool)
    [sent] = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert (sent.dataset.name, sent.dataset.digest) == ("cifar10-prepared", "0" * 32)


def test_a_model_is_not_logged_when_the_server_is_away_at_the_end(tmp_path, caplog):
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"never read: the server is checked first")
    away = f"http://127.0.0.1:{free_port()}"
    log_best_model(away, "run", checkpoint, network_from=lambda path: pytest.fail("built the model"), step=0)
    assert re.search(r"no model logged for run run: tracking server .* does not answer", caplog.text)


def test_an_experiment_on_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    """Created from another folder (a subfolder, or the copy `dvc exp run --temp` trains in and then
    deletes), an experiment's artifacts still land beside the project's mlflow.db, in mlruns/."""
    project, copy = tmp_path / "project", tmp_path / "copy"
    project.mkdir(), copy.mkdir()
    monkeypatch.chdir(copy)
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    run = client.create_run(experiment_id(client, "optimizers study"))
    client.log_text(run.info.run_id, "kept", "note.txt")
    [note] = (project / "mlruns").rglob("note.txt")
    assert note.read_text() == "kept" and not (copy / "mlruns").exists()

"""`dvc repro` and `dvc exp run` for real, in a temporary git repository holding the project's pipeline files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers.project import ROOT, copy_project_sources
from helpers.synthetic import VAL_SIZE
from hpcsweep.config import load_config

pytestmark = pytest.mark.slow

TINY_TRAINING = {"max_epochs": 1, "warmup_epochs": 0, "batch_size": 60, "base_batch_size": 60, "accelerator": "cpu"}


def succeeded(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def run(args: list[str], cwd: Path) -> str:
    result = succeeded(args, cwd)
    return result.stdout + result.stderr


def run_json(args: list[str], cwd: Path):
    """A `--json` command's answer (DVC warns on stderr, e.g. about metrics files a stage has not written)."""
    return json.loads(succeeded(args, cwd).stdout)


def edit_params(repo: Path, section: str, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def new_repo(folder: Path, archive: Path) -> Path:
    """The project's pipeline files in a fresh git repository, shrunk to `archive` and a 1-epoch training."""
    copy_project_sources(folder, "dvc.yaml", "params.yaml", "src", ".dvcignore")
    edit_params(folder, "data", archive=str(archive), val_size=VAL_SIZE)
    edit_params(folder, "train", **TINY_TRAINING)
    edit_params(folder, "tracking", log_model=False)  # seconds per training; the make-run test logs them
    run(["git", "init", "-q"], folder)
    run(["dvc", "init", "-q"], folder)
    copy_project_sources(folder, ".dvc/plots")  # the project's plot templates, beside the config dvc init wrote
    commit_everything(folder, "pipeline")
    return folder


def commit_everything(folder: Path, message: str) -> None:
    run(["git", "add", "-A"], folder)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], folder)


@pytest.fixture
def repo(tmp_path, synthetic_archive) -> Path:
    return new_repo(tmp_path, synthetic_archive)


@pytest.fixture(scope="module")
def first_repro(tmp_path_factory, synthetic_archive) -> tuple[Path, str]:
    """A fresh repository after its first `dvc repro train`, and what that command printed: built once
    for the tests that start from a reproduced pipeline, which work on copies of it."""
    folder = new_repo(tmp_path_factory.mktemp("reproduced"), synthetic_archive)
    return folder, run(["dvc", "repro", "train"], folder)


@pytest.fixture
def reproduced(first_repro, tmp_path) -> Path:
    """A copy of `first_repro`'s repository: download, prepare and train done, nothing changed since."""
    return shutil.copytree(first_repro[0], tmp_path / "repo", symlinks=True)


@pytest.fixture(scope="module")
def data_committed(tmp_path_factory, synthetic_archive) -> Path:
    """A repository whose download and prepare outputs are in its DVC cache, with dvc.lock committed."""
    folder = new_repo(tmp_path_factory.mktemp("data-committed"), synthetic_archive)
    run(["dvc", "repro", "prepare"], folder)
    commit_everything(folder, "the prepared data")
    return folder


@pytest.fixture
def prepared_repo(data_committed, tmp_path) -> Path:
    """A copy of `data_committed`'s repository: only the train stage is left to run."""
    return shutil.copytree(data_committed, tmp_path / "repo", symlinks=True)


def test_repro_runs_every_stage_once_and_a_second_repro_does_nothing(first_repro, reproduced):
    repo, first = reproduced, first_repro[1]  # `dvc repro train`; study and report: the make-run test below
    for stage in ("download", "prepare", "train"):
        assert f"Running stage '{stage}'" in first, stage
    assert (repo / "data/prepared/train.pt").is_file()
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics["status"] == "FINISHED" and metrics["epochs"] == 1
    assert "val_acc" in run(["dvc", "metrics", "show"], repo)
    second = run(["dvc", "repro", "train"], repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(["dvc", "status", "train"], repo)


def test_a_train_param_change_reruns_only_train(reproduced):
    repo = reproduced
    edit_params(repo, "train", lr=0.05)
    out = run(["dvc", "repro", "train"], repo)
    assert "Running stage 'train'" in out
    assert "Running stage 'download'" not in out and "Running stage 'prepare'" not in out


def test_editing_the_prepare_source_or_val_size_reruns_prepare_but_not_download(prepared_repo):
    repo = prepared_repo
    with open(repo / "src/hpcsweep/data/prepare.py", "a") as source:
        source.write("\n# touched\n")
    out = run(["dvc", "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in out and "Running stage 'download'" not in out
    edit_params(repo, "data", val_size=20)
    out = run(["dvc", "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in out and "Running stage 'download'" not in out
    assert json.loads((repo / "data/prepared/stats.json").read_text())["validation"]["size"] == 20


def test_editing_the_report_code_leaves_training_up_to_date_and_training_code_does_not(reproduced):
    repo = reproduced
    with open(repo / "src/hpcsweep/report/build.py", "a") as source:
        source.write("\n# touched\n")
    assert "Data and pipelines are up to date" in run(["dvc", "status", "train"], repo)
    assert "src/hpcsweep/report" in run(["dvc", "status", "report"], repo)
    with open(repo / "src/hpcsweep/training/module.py", "a") as source:
        source.write("\n# touched\n")
    assert "src/hpcsweep/training" in run(["dvc", "status", "train"], repo)


def write_tiny_study(repo: Path) -> dict:
    """The real cpu-demo grid shrunk to three 1-epoch points on the synthetic data, where the study
    stage reads it: sgd tuned over its two learning rates, and adam at one, one seed."""
    spec = yaml.safe_load((ROOT / "slurm/grids/cpu-demo.yaml").read_text())
    spec["base"].update(TINY_TRAINING, limit_train_samples=120, micro_batch_size=60, memory_limit_mb=None)
    spec["grid"] = {"optimizer": ["sgd", "adam"]}
    spec["variants"] = [variant for variant in spec["variants"] if variant["optimizer"] == "sgd"]
    spec["seeds"] = [0]
    (repo / "slurm/grids").mkdir(parents=True)
    (repo / "slurm/grids/cpu-demo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def test_make_run_trains_the_study_grid_and_reports_it_and_leaves_the_pipeline_up_to_date(repo):
    """`make run` is `dvc repro report`: download -> prepare -> study (the grid, here) -> report."""
    spec = write_tiny_study(repo)
    edit_params(repo, "tracking", log_model=True)  # as params.yaml has it
    out = run(["dvc", "repro", "report"], repo)
    for stage in ("download", "prepare", "study", "report"):
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'train'" not in out
    status = (repo / "metrics/study-status.txt").read_text().splitlines()
    assert status[-1] == "3 points: 3 FINISHED", status
    labels = [row.split(maxsplit=4)[-1] for row in status[1:-1]]  # the point column of `hpcsweep status`
    assert sorted(label.split(",")[0] for label in labels) == ["optimizer=adam", "optimizer=sgd", "optimizer=sgd"]
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert (summary["runs"], summary["finished_runs"]) == (3, 3)
    with open(repo / "reports/pareto.csv") as front:
        trained = {row["configuration"] for row in csv.DictReader(front)}  # each set-up at its chosen lr
    # sgd's two learning rates are one set-up, shown at its best: one configuration per optimizer
    assert sorted(label.split(",")[0] for label in trained) == ["optimizer=adam", "optimizer=sgd"]
    page = (repo / "reports/index.html").read_text()
    # every trained configuration is a row of the page's table (its findings name only the winners)
    assert all(f"<td data-sort='{o}'>{o}</td>" in page for o in spec["grid"]["optimizer"]) and "Recommendation:" in page
    assert len((repo / "reports/curves.csv").read_text().splitlines()) == 1 + len(trained)  # 1 epoch each
    metrics = run_json(["dvc", "metrics", "show", "--json"], repo)[""]["data"]["reports/summary.json"]["data"]
    assert metrics["best_configuration"] in trained and metrics["best_val_acc"] == summary["best_val_acc"]
    plots = run_json(["dvc", "plots", "show", "--json"], repo)["data"]
    curves = plots["reports/curves.csv"][0]["content"]  # the Vega-Lite spec, filled from the project's template
    assert curves["encoding"]["color"]["field"] == "configuration"  # one line per configuration
    assert {point["configuration"] for point in curves["data"]["values"]} == trained
    assert "Data and pipelines are up to date" in run(["dvc", "status", "--with-deps", "report"], repo)
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    points = {run.info.run_id for run in client.search_runs(experiments, "tags.`hpcsweep.role` = 'point'")}
    assert {model.source_run_id for model in client.search_logged_models(experiments)} == points  # one model each


@pytest.mark.parametrize("where", ["--temp", "--queue"])
def test_an_experiment_in_a_temporary_copy_with_set_params_logs_into_the_projects_store(prepared_repo, where):
    """`dvc exp run --temp -S` (or `--queue`, then `--run-all`) rewrites params.yaml without the quotes of
    `time: "10:00:00"` (a base-60 integer to YAML 1.1) and trains in a copy under .dvc/tmp/exps that is
    deleted afterwards. The data stages are in the cache already: the experiment runs only `train`."""
    repo = prepared_repo
    edit_params(repo, "slurm", time="10:00:00")
    run(["git", "commit", "-qam", "a ten-hour limit"], repo)
    run(["dvc", "exp", "run", where, "train", "-S", "train.optimizer=adam", "--name", "adam"], repo)
    if where == "--queue":
        run(["dvc", "exp", "run", "--run-all"], repo)
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.data.params["optimizer"], r.info.status) for r in runs] == [("adam", "FINISHED")]
    assert any(folder.is_dir() and any(folder.iterdir()) for folder in (repo / "checkpoints").iterdir())
    assert list((repo / "mlruns").rglob("config.json")), "the run's artifacts were deleted with the copy"
    experiment = experiment_named(run_json(["dvc", "exp", "show", "--json"], repo), "adam")
    assert experiment["metrics"]["metrics/train.json"]["data"]["status"] == "FINISHED"
    rewritten = repo / "experiment-params.yaml"  # the file as DVC rewrote it, read back as hpcsweep reads it
    rewritten.write_text(succeeded(["git", "show", f"{experiment['rev']}:params.yaml"], repo).stdout)
    assert "time: 10:00:00" in rewritten.read_text()  # the quotes DVC drops
    config = load_config(rewritten)
    assert (config.slurm.time, config.train.optimizer) == ("10:00:00", "adam")


def experiment_named(shown: list[dict], name: str) -> dict:
    """The data of one experiment in `dvc exp show --json`'s answer."""
    revisions = [rev for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]]
    return next(rev["data"] for rev in revisions if rev["name"] == name)

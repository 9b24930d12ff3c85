"""The project's promises about itself: same pins everywhere, entry points that run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers.project import ROOT, shipped_params
from helpers.runs import TINY, environment
from helpers.synthetic import VAL_SIZE

CONDA_ENV_KEYS = {"name", "channels", "dependencies"}  # what an environment.yml may hold, less prefix and variables
PROJECT_FILES = ("MLproject", "python_env.yaml")  # what `mlflow run` reads besides the code
# The command the README and MLproject document: offline clusters have neither conda nor a package index
DOCUMENTED_MLFLOW_RUN = ["mlflow", "run", ".", "--env-manager", "local"]


def project_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all("==" in requirement for requirement in project["dependencies"])
    assert project["requires-python"] == ">=3.11,<3.12"
    return sorted(project["dependencies"])


def test_python_env_is_the_projects_environment_with_pyprojects_pins():
    """`mlflow run .` without --env-manager builds python_env.yaml with MLflow's virtualenv manager
    (pyenv, then pip from a package index). No index is reachable in CI, so that environment is not
    built here; MLflow's own project loader must take the file, and it must hold pyproject's pins,
    Python 3.11 in the form pyenv resolves, and hpcsweep itself."""
    from mlflow.projects import env_type
    from mlflow.projects.utils import load_project

    loaded = load_project(str(ROOT))
    assert loaded.env_type == env_type.PYTHON and Path(loaded.env_config_path).resolve() == ROOT / "python_env.yaml"
    python_env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert python_env["python"] == "3.11" and python_env["build_dependencies"] == ["pip"]
    *pins, install_project = python_env["dependencies"]
    assert sorted(pins) == project_pins() and install_project == "."


def test_conda_env_pins_the_same_versions_as_pyproject():
    """conda.yaml is the environment for conda users (`conda env create -f conda.yaml`, then
    `mlflow run . --env-manager local`). No conda, mamba or micromamba is installed on the
    development machine or in CI, so that environment is never built here. What is checked
    instead: the file has the structure `conda env create` reads (name, channels, dependencies:
    conda specs and one pip list, with `pip` itself among the conda packages); python is pinned
    to pyproject's 3.11; and the pip list is pyproject's pins and hpcsweep itself."""
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    assert set(conda) == CONDA_ENV_KEYS and conda["name"] == "hpcsweep"
    assert conda["channels"] and all(isinstance(channel, str) for channel in conda["channels"])
    specs = [d for d in conda["dependencies"] if isinstance(d, str)]
    [pip_section] = [d for d in conda["dependencies"] if not isinstance(d, str)]
    assert set(pip_section) == {"pip"} and "pip" in specs
    assert all(re.fullmatch(r"[a-z0-9_.-]+(=[0-9.*]+)?", spec) for spec in specs), specs
    *pins, install_project = pip_section["pip"]
    assert sorted(pins) == project_pins() and install_project == "-e ."
    assert [spec for spec in specs if spec.startswith("python")] == ["python=3.11"]


def test_every_documented_mlflow_run_names_the_env_manager_that_works_offline():
    documented = [
        line.strip()
        for path in (ROOT / "README.md", ROOT / "MLproject")
        for line in path.read_text().splitlines()
        if "mlflow run " in line and "-e " in line
    ]
    assert documented and all(" --env-manager local" in line for line in documented), documented


TORCH_PACKAGES = ("torch", "torchvision")
SITE_BUILD = "cu126"  # the local version label PyTorch's CUDA 12.6 index gives its wheels


def pinned(names: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(requirement.split("==") for requirement in project["dependencies"])
    return {name: pins[name] for name in names}


def build_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A real, tiny wheel: what pip resolves is its name, version and requirements, not its 5 GB of kernels."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    wheel = ["Wheel-Version: 1.0", "Generator: hpcsweep-tests", "Root-Is-Purelib: true", "Tag: py3-none-any"]
    files = {
        f"{name}/__init__.py": "",
        f"{dist_info}/METADATA": "\n".join(metadata) + "\n",
        f"{dist_info}/WHEEL": "\n".join(wheel) + "\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def site_torch_index(folder: Path) -> Path:
    """A PEP 503 simple index laid out like PyTorch's per-CUDA ones: the pinned torch and
    torchvision as +cu126 builds, torchvision requiring the torch it was built for."""
    pins = pinned(TORCH_PACKAGES)
    for name, version in pins.items():
        requires = [f"torch=={pins['torch']}"] if name == "torchvision" else []
        (folder / name).mkdir(parents=True)
        wheel = build_wheel(folder / name, name, f"{version}+{SITE_BUILD}", requires)
        link = wheel.name.replace("+", "%2B")
        (folder / name / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="{link}">{wheel.name}</a></body></html>'
        )
    return folder


def pip_without_configuration() -> dict[str, str]:
    """pip with no config file, find-links or extra index of this machine: only the command's own index counts."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_make_setup_with_a_torch_index_installs_the_pinned_torch_from_it_before_everything_else(tmp_path):
    index = site_torch_index(tmp_path / "simple").as_uri()
    rendered = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "setup", f"TORCH_INDEX={index}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    from_index = [line for line in rendered if "--index-url" in line]
    pins = [f"{name}=={version}" for name, version in pinned(TORCH_PACKAGES).items()]
    assert from_index == [f".venv/bin/python -m pip install --quiet --index-url {index} {' '.join(pins)}"]
    assert rendered.index(from_index[0]) < rendered.index(".venv/bin/python -m pip install --quiet -e '.[test]'")

    # the rendered command itself (with this test's python), as a dry run: what would it install, from where?
    report = tmp_path / "report.json"
    command = [sys.executable, *shlex.split(from_index[0])[1:], "--dry-run", "--ignore-installed", "--report", report]
    done = subprocess.run(command, env=pip_without_configuration(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = {
        item["metadata"]["name"]: (item["metadata"]["version"], item["download_info"]["url"].startswith(index))
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen == {name: (f"{version}+{SITE_BUILD}", True) for name, version in pinned(TORCH_PACKAGES).items()}
    without = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "--index-url" not in without.stdout  # no TORCH_INDEX: the one install from PyPI, as before


def hpcsweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcsweep", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_imports_prepares_and_reports_user_errors_in_one_line(project, synthetic_archive):
    done = hpcsweep("download", "-s", f"data.archive={synthetic_archive}", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "md5 not checked" in done.stdout
    done = hpcsweep("prepare", cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "data/prepared/test.pt").is_file()
    bad = hpcsweep("prepare", "-s", "data.raw_dir=nowhere", cwd=project)
    assert bad.returncode == 1
    assert (
        bad.stderr == "Error: nowhere/cifar-10-python.tar.gz: not found; run `hpcsweep download` first (or --raw DIR)\n"
    )
    bad = hpcsweep("download", "-s", "optimizr=adam", cwd=project)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: -s: unknown key train.optimizr; valid: model,")
    assert "Traceback" not in bad.stderr


def copy_mlflow_project(project: Path) -> None:
    """The files `mlflow run .` reads into `project`, beside its params.yaml; the code linked, not copied."""
    for name in PROJECT_FILES:
        (project / name).write_text((ROOT / name).read_text())
    (project / "src").symlink_to(ROOT / "src")


def mlflow_run(project: Path, entry: str, *parameters: str) -> subprocess.CompletedProcess:
    """The documented `mlflow run . -e ENTRY` in `project`, logging to a SQLite store there."""
    command = [*DOCUMENTED_MLFLOW_RUN, "-e", entry, *(arg for parameter in parameters for arg in ("-P", parameter))]
    env = environment(f"sqlite:///{project / 'mlflow.db'}")
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_mlproject_entry_points_import_and_prepare(project, synthetic_archive):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["val_size"] = VAL_SIZE  # the synthetic archive's 300 training images hold no 5000
    (project / "params.yaml").write_text(yaml.safe_dump(params))  # the project's own relative data paths
    copy_mlflow_project(project)
    for entry, parameters in (("download", [f"archive={synthetic_archive}"]), ("prepare", [])):
        done = mlflow_run(project, entry, *parameters)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "data/prepared/stats.json").is_file()


@pytest.mark.slow
def test_mlproject_grid_and_report_entry_points_run_a_grid_and_report_on_it(prepared):
    project = prepared.parent.parent
    copy_mlflow_project(project)
    base = {**TINY, "limit_train_samples": 60, "base_batch_size": 30}  # the lr is scaled: not the config's
    grid = {"name": "entry", "experiment": "entry-study", "base": base, "seeds": [0]}
    (project / "entry.yaml").write_text(yaml.safe_dump(grid))

    done = mlflow_run(project, "grid", "gridfile=entry.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "entry: 1 of 1 points to run" in done.stdout
    done = mlflow_run(project, "report", "grid=entry", "out=study-report")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((project / "study-report/summary.json").read_text())
    assert (summary["runs"], summary["finished_runs"]) == (1, 1)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = {run.data.tags["hpcsweep.role"]: run for run in client.search_runs(experiments, "tags.grid = 'entry'")}
    point = runs["point"].data.params
    assert runs["point"].info.status == "FINISHED" and point["seed"] == "0"
    # autologging's params, which a clash with the launcher's would drop silently on SQLite
    assert (point["epochs"], point["optimizer_name"], point["dampening"]) == ("1", "SGD", "0")
    uploaded = {artifact.path for artifact in client.list_artifacts(runs["launch"].info.run_id, "report")}
    assert "report/summary.json" in uploaded  # the report of this grid, on its launch run


# The MLproject's train parameters for keys outside `train`, and the keys they set
SECTION_PARAMETERS = {
    "loader": "data.loader",
    "prepared_dir": "data.prepared_dir",
    "checkpoint_dir": "tracking.checkpoint_dir",
    "system_metrics": "tracking.system_metrics",
}


def test_mlproject_train_parameters_are_every_train_key_and_the_other_keys_users_set(tmp_path):
    """`mlflow run` logs every parameter, defaults included, before hpcsweep logs its params, and a
    logged param never changes: a parameter hpcsweep logs defaults to params.yaml's value, the
    others to "null", which passes no `-s` and so keeps params.yaml's value."""
    from hpcsweep.config import load_config
    from hpcsweep.tracking.tags import logged_params

    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["train"]
    config = load_config(shipped_params(tmp_path / "params.yaml"))
    assert list(entry["parameters"]) == [f.name for f in dataclasses.fields(config.train)] + list(SECTION_PARAMETERS)
    logged = logged_params(config)
    for name, spec in entry["parameters"].items():
        assert f"-s {SECTION_PARAMETERS.get(name, name)}={{{name}}}" in entry["command"], name
        if name in logged:
            assert yaml.safe_load(str(spec["default"])) == logged[name], name
        else:
            assert spec["default"] == "null" and f'[ "{{{name}}}" = "null" ] ||' in entry["command"], name


def test_no_private_mlflow_name_is_imported():
    """MLflow is reached through its public doors only: its `_private` names move between releases."""
    import ast

    private = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
                names = [alias.name for alias in node.names]
                if any(part.startswith("_") for part in node.module.split(".") + names):
                    private.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {names}")
    assert private == []


def test_spool_schemes_are_mlflow_plugins_that_load_before_mlflow():
    """MLflow registers plugin entry points while it is itself being imported: a target module that
    imported mlflow at its top would be found half-initialised and its scheme silently dropped."""
    from importlib.metadata import entry_points

    stores = {entry.name: entry.value for entry in entry_points(group="mlflow.tracking_store")}
    repositories = {entry.name: entry.value for entry in entry_points(group="mlflow.artifact_repository")}
    assert stores["spool+http"] == stores["spool+https"] == "hpcsweep.tracking.plugin:spooling_store"
    assert repositories["spool+mlflow-artifacts"] == "hpcsweep.tracking.plugin:spooling_artifact_repository"
    check = "import sys, hpcsweep.tracking.plugin; print('mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_source_module_is_short_enough_to_read_in_one_sitting():
    lengths = {path: len(path.read_text().splitlines()) for path in (ROOT / "src").rglob("*.py")}
    assert {str(path.relative_to(ROOT)): n for path, n in lengths.items() if n > 350} == {}

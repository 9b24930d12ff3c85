"""The project's promises about itself: same pins everywhere, entry points that run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def test_conda_env_pins_the_same_versions_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project["dependencies"])
    assert all("==" in requirement for requirement in project["dependencies"])
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11" and project["requires-python"] == ">=3.11,<3.12"


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


@pytest.mark.slow
def test_mlproject_entry_points_import_and_prepare(project, synthetic_archive):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}  # earlier tests' runs
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}", PATH=f"{Path(sys.executable).parent}:{env['PATH']}"
    )
    for name in ("MLproject", "conda.yaml", "params.yaml"):
        (project / name).unlink(missing_ok=True)
    for name in ("MLproject", "conda.yaml"):
        (project / name).write_text((ROOT / name).read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "src").symlink_to(ROOT / "src")
    for entry, extra in (("download", ["-P", f"archive={synthetic_archive}"]), ("prepare", [])):
        done = subprocess.run(
            ["mlflow", "run", ".", "-e", entry, "--env-manager", "local", *extra],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "data/prepared/stats.json").is_file()


def test_mlproject_train_parameters_are_every_train_key_with_params_yaml_defaults():
    from hpcsweep.config import load_config

    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["train"]
    defaults = load_config(ROOT / "params.yaml").train
    assert list(entry["parameters"]) == [f.name for f in dataclasses.fields(defaults)]
    for name, spec in entry["parameters"].items():
        assert yaml.safe_load(str(spec["default"])) == getattr(defaults, name), name
        assert f"-s {name}={{{name}}}" in entry["command"], name

"""`dvc repro` for real, in a temporary git repository holding the project's pipeline files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project_sources

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def repo(tmp_path, synthetic_archive) -> Path:
    copy_project_sources(tmp_path, "dvc.yaml", "params.yaml", "src")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["archive"] = str(synthetic_archive)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], tmp_path)
    return tmp_path


def test_repro_prepares_the_data_and_a_second_repro_does_nothing(repo):
    first = run(["dvc", "repro"], repo)
    assert "Running stage 'download'" in first and "Running stage 'prepare'" in first
    assert (repo / "data/prepared/train.pt").is_file() and (repo / "data/prepared/stats.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "prepare"}
    second = run(["dvc", "repro"], repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo)


def test_a_train_param_change_does_not_rerun_the_data_stages(repo):
    run(["dvc", "repro"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.05
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage" not in run(["dvc", "repro"], repo)


def test_editing_the_prepare_source_reruns_only_prepare(repo):
    run(["dvc", "repro"], repo)
    with open(repo / "src/hpcsweep/data/prepare.py", "a") as source:
        source.write("\n# touched\n")
    out = run(["dvc", "repro"], repo)
    assert "Running stage 'prepare'" in out and "Running stage 'download'" not in out


"""The repository's own paths, and the rule for what a missing prerequisite does to a test.

Tests shrink the real project (params.yaml, dvc.yaml, src) rather than invent one, so they need
to find it; under CI=true a missing prerequisite is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("HPCSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip on a developer's machine that lacks something; fail in CI, where it must be there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def copy_project_sources(destination: Path, *names: str) -> None:
    """Copy top-level project files (dvc.yaml, src, ...) into a temp repo for end-to-end tests."""
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)


def commit_all(folder: Path, *paths: str) -> str:
    """Make `folder` a git work tree with `paths` committed; returns the commit."""
    for command in (["init", "-q"], ["add", *paths], ["commit", "-qm", "project"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=folder, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True).stdout.strip()


def shipped_params(destination: Path) -> Path:
    """params.yaml as the project ships it (its committed version), for tests of the shipped defaults:
    the README tells users to edit the file (data.archive offline, `dvc exp run -S` in the
    workspace), and their edits must not fail `make test`. Outside a git checkout, the file as it is."""
    shipped = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if shipped.returncode != 0:
        return ROOT / "params.yaml"
    destination.write_text(shipped.stdout)
    return destination

"""The test suite's own promise (README: Tests): under CI=true a missing service or data set fails
the run; on a developer's machine it skips. A skip counted as a pass in CI would hide a broken setup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.project import ROOT

MISSING_SERVICE = """
from helpers.project import require

def test_needs_a_service():
    require(False, "the service did not start")
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 failed"), ("", "1 skipped")])
def test_a_missing_service_fails_under_ci_and_skips_elsewhere(tmp_path, ci, outcome):
    (tmp_path / "test_missing.py").write_text(MISSING_SERVICE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert outcome in done.stdout, done.stdout[-2000:]
    assert ("CI=true and the service did not start" in done.stdout) == (ci == "true")

"""The test suite's own promise (README: Tests): under CI=true a missing service or data set fails
the run; on a developer's machine it skips. A skip counted as a pass in CI would hide a broken setup."""

from __future__ import annotations

import json
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


def test_groups_are_handed_out_longest_first_and_keep_their_own_order(tmp_path, monkeypatch):
    """make test's packing: the group with the most recorded seconds first, whatever its test count."""
    from helpers import scheduling

    durations = tmp_path / "durations.json"
    seconds = {"m::1": 10, "m::2": 10, "m::3": 10, "long::1": 300, "a::1": 50, "a::2": 200, "b::1": 60}
    durations.write_text(json.dumps(seconds))
    monkeypatch.setattr(scheduling, "DURATIONS", durations)
    items = ["m::1", "m::2", "m::3", "a::1", "a::2", "long::1", "b::1", "new::1"]
    group = {"a::2": "cluster", "b::1": "cluster"}  # tests of two modules sharing one group weigh together
    scheduling.longest_groups_first(items, lambda item: group.get(item, item.split("::")[0]), lambda item: item)
    assert items == ["long::1", "a::2", "b::1", "a::1", "m::1", "m::2", "m::3", "new::1"]


def test_a_recorded_duration_is_keyed_as_collection_names_the_test():
    from helpers.scheduling import test_id

    assert test_id("tests/test_x.py::test_y[alice:***@db]@slurm-cluster") == "tests/test_x.py::test_y[alice:***@db]"
    assert test_id("tests/test_x.py::test_y@test_x") == "tests/test_x.py::test_y"

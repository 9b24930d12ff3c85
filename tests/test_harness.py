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


def test_groups_are_handed_out_longest_first_and_keep_their_own_order(tmp_path, monkeypatch):
    """make test's packing: the group with the most recorded seconds first, whatever its test count."""
    from helpers import scheduling

    durations = tmp_path / "durations.json"
    durations.write_text('{"test_many": 10, "test_one_long": 300, "test_a": 50, "test_b": 60}')
    monkeypatch.setattr(scheduling, "DURATIONS", durations)
    items = [
        "test_many::1",
        "test_many::2",
        "test_many::3",
        "test_a::1",
        "test_one_long::1",
        "test_b::1",
        "test_new::1",
    ]
    group = {"test_a": "cluster", "test_b": "cluster"}  # two modules sharing one group weigh together
    module = lambda item: item.split("::")[0]  # noqa: E731
    scheduling.longest_groups_first(items, lambda item: group.get(module(item), module(item)), module)
    assert items == [
        "test_one_long::1",
        "test_a::1",
        "test_b::1",
        "test_many::1",
        "test_many::2",
        "test_many::3",
        "test_new::1",
    ]

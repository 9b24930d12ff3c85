"""Longest work first: the order `make test` hands its module groups to the two xdist workers.

pytest-xdist's `--dist loadgroup` sends whole groups (a module, or every module that uses the
development cluster) to whichever worker is free, by default the groups with the most tests
first. Test count says little about time here: test_faults.py is one test of five minutes, and
placed last it ran alone while the other worker sat idle. Handing out the groups by their
measured seconds, longest first, keeps both workers busy to the end (`make test` passes
`--no-loadscope-reorder`, so xdist keeps this order).

The seconds come from tests/durations.json, one entry per test, written by a full run under
HPCSWEEP_RECORD_DURATIONS=1 (see README, Tests); a group weighs the sum of its tests, so a module
whose cluster tests run in the cluster's group weighs only its others. A stale or missing entry
changes only the order.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from pathlib import Path

DURATIONS = Path(__file__).parent.parent / "durations.json"
RECORD_VARIABLE = "HPCSWEEP_RECORD_DURATIONS"


def test_id(nodeid: str) -> str:
    """A report's node id as collection names it: pytest-xdist's loadgroup appends `@GROUP`."""
    return nodeid.rpartition("@")[0] if "@" in nodeid else nodeid


def longest_groups_first(items: list, group_of: Callable[[object], str], test_of: Callable[[object], str]):
    """`items` in place, ordered by the recorded seconds of their group, longest first (stable
    within a group and among groups with no record)."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    group_seconds: dict[str, float] = collections.defaultdict(float)
    for item in items:
        group_seconds[group_of(item)] += seconds.get(test_of(item), 0.0)
    items.sort(key=lambda item: -group_seconds[group_of(item)])


def write_durations(reports: Iterable) -> None:
    """Seconds per test (setup, call and teardown) into DURATIONS."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for report in reports:
        seconds[test_id(report.nodeid)] += report.duration
    DURATIONS.write_text(json.dumps({test: round(s, 1) for test, s in sorted(seconds.items())}, indent=1) + "\n")

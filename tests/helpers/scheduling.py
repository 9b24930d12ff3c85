"""Longest work first: the order `make test` hands its module groups to the two xdist workers.

pytest-xdist's `--dist loadgroup` sends whole groups (a module, or every module that uses the
development cluster) to whichever worker is free, by default the groups with the most tests
first. Test count says little about time here: test_faults.py is one test of five minutes, and
placed last it ran alone while the other worker sat idle. Handing out the groups by their
measured seconds, longest first, keeps both workers busy to the end (`make test` passes
`--no-loadscope-reorder`, so xdist keeps this order).

The seconds come from tests/durations.json, written by a full run under
HPCSWEEP_RECORD_DURATIONS=1 (see README, Tests); a stale or missing entry changes only the order.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from pathlib import Path

DURATIONS = Path(__file__).parent.parent / "durations.json"
RECORD_VARIABLE = "HPCSWEEP_RECORD_DURATIONS"


def module_of(nodeid: str) -> str:
    """tests/test_x.py::test_y[param] -> test_x"""
    return Path(nodeid.split("::")[0]).stem


def longest_groups_first(items: list, group_of: Callable[[object], str], module_of_item: Callable[[object], str]):
    """`items` in place, ordered by the recorded seconds of their group, longest first (stable
    within a group and among groups with no record)."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    group_seconds: dict[str, float] = collections.defaultdict(float)
    for module in {(group_of(item), module_of_item(item)) for item in items}:
        group_seconds[module[0]] += seconds.get(module[1], 0.0)
    items.sort(key=lambda item: -group_seconds[group_of(item)])


def write_durations(reports: Iterable) -> None:
    """Seconds per test module (setup, call and teardown of every test) into DURATIONS."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for report in reports:
        seconds[module_of(report.nodeid)] += report.duration
    DURATIONS.write_text(json.dumps({module: round(s, 1) for module, s in sorted(seconds.items())}, indent=1) + "\n")

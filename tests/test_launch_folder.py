"""A launch folder belongs to one launch: two launches in the same second never share one.

The jobs of an array read their points from the launch folder until they end; a second launch
writing into the same folder would have them train its points instead.
"""

from __future__ import annotations

import json
import time

from helpers.runs import TINY, write_grid
from hpcsweep.grid.executors.base import ExecutorSettings
from hpcsweep.grid.executors.slurm import SlurmExecutor
from hpcsweep.grid.launch import LaunchOptions, launch
from hpcsweep.grid.spec import load_grid


def test_two_launches_in_the_same_second_get_two_folders_and_keep_their_points(prepared, monkeypatch):
    project = prepared.parent.parent
    monkeypatch.chdir(project)
    monkeypatch.setattr(time, "strftime", lambda *_: "20250101-120000")  # both launches in one second, for sure
    options = LaunchOptions(executor=SlurmExecutor(ExecutorSettings()), dry_run=True)
    grid_file = write_grid(project, {"name": "twice", "base": TINY, "grid": {"seed": [0, 1]}})
    first = launch(load_grid(grid_file, project / "params.yaml", {"lr": 0.1}), options)
    second = launch(load_grid(grid_file, project / "params.yaml", {"lr": 0.2}), options)
    third = launch(load_grid(grid_file, project / "params.yaml", {"lr": 0.3}), options)

    assert [first.name, second.name, third.name] == ["20250101-120000", "20250101-120000-2", "20250101-120000-3"]
    for folder, lr in ((first, 0.1), (second, 0.2), (third, 0.3)):
        (points_file,) = folder.glob("points-*.json")
        assert {p["config"]["train"]["lr"] for p in json.loads(points_file.read_text())["points"]} == {lr}

"""A 200-point grid through real job arrays into `hpcsweep server` on PostgreSQL: once each, all shown.

The scale path end to end (issue 16) at a size CI can afford: the launcher queues every array
before it creates the runs, tasks that start before their run exists find or make exactly one,
and status and report read 200 runs of 30 epochs each. The tasks log like a 30-epoch training
without training (helpers/simulated_point.py); benchmarks/scale.py runs the same with 1000 points
and times it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import pytest

from helpers import simulated_point
from helpers.cluster import children, environment_with_slurm, launch_on_cluster, settled, wait_until
from helpers.runs import TINY, hpcsweep, write_grid

pytestmark = [pytest.mark.slurm, pytest.mark.server, pytest.mark.slow]

LRS = [0.0125, 0.025, 0.05, 0.1, 0.2]
SEEDS = list(range(20))
RESOURCES = {"cpus_per_task": 1, "mem": "500M", "time": "00:20:00", "partition": "debug", "max_parallel": 8}


def test_200_points_run_once_each_under_one_parent_and_status_and_report_read_them_all(
    prepared, slurm_cluster, shared_server
):
    project, uri, name = prepared.parent.parent, shared_server.uri, f"scale{os.getpid()}"
    template = project / "simulated.sbatch"
    template.write_text(simulated_point.template(sys.executable))
    spec = {"name": name, "base": TINY, "slurm": RESOURCES, "grid": {"optimizer": ["sgd", "adam"], "lr": LRS}}
    grid = write_grid(project, {**spec, "seeds": SEEDS})

    done = launch_on_cluster(grid, project, uri, "--template", str(template))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"200 points queued in [\d.]+ s\n", done.stdout), done.stdout[-2000:]
    assert done.stdout.index("points queued") < done.stdout.index("runs created")  # arrays first, runs after
    wait_until(lambda: settled(uri, name, 200), 900, "the 200 tasks to leave the queue")

    runs = children(uri, name)
    assert len(runs) == 200 and {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags["config_hash"] for run in runs}) == 200  # none duplicated
    assert len({run.data.tags["mlflow.parentRunId"] for run in runs}) == 1
    assert Counter(run.data.params["lr"] for run in runs) == {str(lr): 40 for lr in LRS}

    status = hpcsweep(["status", name], project, uri, env=environment_with_slurm(uri), timeout=300)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "200 points: 200 COMPLETED"

    report = hpcsweep(["report", "--grid", name, "--out", str(project / "scale-report")], project, uri, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((project / "scale-report" / "summary.json").read_text())
    assert summary["configurations"] == 10 and summary["finished_runs"] == 200
    assert f"lr={simulated_point.BEST_LR}" in summary["best_configuration"]
    logged = [simulated_point.final_accuracy(simulated_point.BEST_LR, seed) for seed in SEEDS]
    assert summary["best_val_acc"] == pytest.approx(sum(logged) / len(logged))  # the mean over its 20 seeds

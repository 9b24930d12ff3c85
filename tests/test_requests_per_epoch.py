"""What one training sends the shared tracking server: a bounded number of requests per epoch,
whatever its number of metrics.

A real reverse proxy that counts requests (helpers/counting_proxy.py) sits between a real
`hpcsweep train` and a real MLflow server. Two trainings of the same size go through it: one as
configured, one with a Lightning callback that logs EXTRA_METRICS more metrics every epoch (as
layer-wise statistics would). Autologging hands each epoch's figures to the store in one
log_batch, the spool keeps it as one record and the sender makes at most one request of it, so
the extra metrics must cost no extra request; everything else a training sends (finding the
experiment, creating and closing the run, config, dataset and checkpoint uploads) happens once
per training, not per epoch or per step. The two trainings run at once, each through its own
proxy, with `tracking.log_model` off as in every test project (what logging the model sends at
the end, one read per metric, is in docs/scaling.md).
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers.counting_proxy import CountingProxy
from helpers.runs import QUICK, environment, history, overrides, runs_of

pytestmark = [pytest.mark.server, pytest.mark.slow]

EPOCHS = 3
EXTRA_METRICS = 300
LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"
# log_batch requests outside the epochs: params, tags, autologging's params, the final figures
# (4 when measured; fewer when the sender merges records that queued up), with room for 2 more
LOG_BATCHES_OUTSIDE_EPOCHS = 6
# every other request (16 when measured): the experiment, the run, its dataset, 4 uploads (config,
# model summary, best and last checkpoint) each after a /health check, the run's end
OTHER_REQUESTS_AT_MOST = 20

# `hpcsweep train` with one more callback: EXTRA metrics logged at every epoch's end
LAUNCHER = """
import sys

import lightning as L

import hpcsweep.training.train as training
from hpcsweep.cli import main

extra = int(sys.argv[1])


class ManyMetrics(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        for index in range(extra):
            module.log(f"layer_{index:03d}/weight_norm", float(index + trainer.current_epoch))


build_trainer = training.build_trainer
training.build_trainer = lambda config, folder, callbacks: build_trainer(config, folder, [*callbacks, ManyMetrics()])
main(sys.argv[2:], prog_name="hpcsweep")
"""


def endpoint(method: str, path: str) -> str:
    """An artifact upload's path names its run and file: all uploads count as one endpoint."""
    return f"{method} {ARTIFACTS}..." if path.startswith(ARTIFACTS) else f"{method} {path}"


def start_training(project: Path, uri: str, experiment: str, extra_metrics: int) -> subprocess.Popen:
    """`hpcsweep train` of EPOCHS short epochs into `experiment`, logging to `uri`, in the background."""
    command = [
        sys.executable,
        "-c",
        LAUNCHER,
        str(extra_metrics),
        "train",
        *overrides(
            *QUICK,
            f"max_epochs={EPOCHS}",
            "limit_train_samples=60",
            f"tracking.experiment={experiment}",
            f"tracking.checkpoint_dir={project / experiment}",  # the same config: else the same run folder
        ),
    ]
    log = open(project / f"{experiment}.log", "w")
    return subprocess.Popen(command, cwd=project, env=environment(uri), stdout=log, stderr=subprocess.STDOUT)


def counted_trainings(project: Path, uri: str, trainings: dict[str, int]) -> dict[str, collections.Counter[str]]:
    """Run the trainings at once (experiment: extra metrics), each through its own counting
    proxy; the requests each one sent, by endpoint."""
    with contextlib.ExitStack() as stack:
        proxies = {experiment: stack.enter_context(CountingProxy(uri)) for experiment in trainings}
        running = {
            experiment: start_training(project, proxies[experiment].uri, experiment, extra)
            for experiment, extra in trainings.items()
        }
        for experiment, process in running.items():
            assert process.wait(timeout=600) == 0, (project / f"{experiment}.log").read_text()[-4000:]
    counted = {}
    for experiment, proxy in proxies.items():
        [run] = runs_of(uri, experiment)
        assert run.info.status == "FINISHED"
        counted[experiment] = collections.Counter()
        for (method, path), count in proxy.counts.items():
            counted[experiment][endpoint(method, path)] += count
    return counted


def others(counts: collections.Counter[str]) -> collections.Counter[str]:
    return collections.Counter({name: count for name, count in counts.items() if name != LOG_BATCH})


def test_a_training_sends_a_bounded_number_of_requests_per_epoch_whatever_its_metrics(prepared, tracking_server):
    project, name = prepared.parent.parent, f"requests-per-epoch-{uuid.uuid4().hex[:8]}"
    counted = counted_trainings(project, tracking_server, {f"{name}-plain": 0, f"{name}-many": EXTRA_METRICS})
    plain, many = counted[f"{name}-plain"], counted[f"{name}-many"]
    print(f"\nrequests of a {EPOCHS}-epoch training, as configured | with {EXTRA_METRICS} more metrics per epoch")
    for name_of_endpoint in sorted(plain | many):
        print(f"  {plain[name_of_endpoint]:3d} | {many[name_of_endpoint]:3d}  {name_of_endpoint}")

    [run] = runs_of(tracking_server, f"{name}-many")
    last = EXTRA_METRICS - 1
    assert history(tracking_server, run.info.run_id, f"layer_{last:03d}/weight_norm") == [
        (epoch, float(last + epoch)) for epoch in range(EPOCHS)
    ], "the extra metrics did not all reach the server"
    for counts in (plain, many):
        assert counts[LOG_BATCH] <= EPOCHS + LOG_BATCHES_OUTSIDE_EPOCHS, counts
        assert sum(others(counts).values()) <= OTHER_REQUESTS_AT_MOST, counts
    assert others(many) == others(plain)

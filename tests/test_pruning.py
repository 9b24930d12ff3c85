"""Early stopping of hopeless grid points (`prune:`): the rules, then real grids, here and on SLURM.

A grid of sane points and one point with an absurd learning rate, listed last so that its peers
have finished when it reaches the rung: it must stop after the rung epoch, end KILLED and tagged,
show as PRUNED, and stay out of a relaunch; the others must train to the end.

On the synthetic archive a ResNet in eval mode predicts one class for the first epoch or so (its
BatchNorm running statistics lag the weights), which is exactly chance, 0.10, on the balanced
validation split, as is the diverged point's (NaN logits all pick class 0): a tie, which the median
rule does not prune. So the sane points take many small Adam steps on a constant schedule and are
judged after epoch 2, when they measurably beat chance (val/acc about 0.2-0.4 here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import optuna
import pytest

from helpers.cluster import children, environment_with_slurm, launch_on_cluster, settled, wait_until
from helpers.runs import TINY, history, hpcsweep, point_runs, write_grid
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.training.prune_settings import PruneSettings

HOPELESS_LR = 10000.0  # diverges at the first step: chance accuracy from then on
SANE_LRS = [0.001, 0.0015]
RUNG = 2
PRUNE_AT_RUNG = {"rule": "median", "rung_epochs": [RUNG], "startup_points": 2}
# 25 Adam steps an epoch at a constant rate: above chance on the validation split by the rung
LEARNS_BY_THE_RUNG = {"optimizer": "adam", "scheduler": "constant", "batch_size": 10, "base_batch_size": 10}


def test_each_rule_judges_points_at_its_rungs_before_the_last_epoch_with_optunas_pruner():
    median = PruneSettings("median", rung_epochs=(2, 5, 10), startup_points=3)
    assert median.rungs(max_epochs=10) == [2, 5]  # stopping after the last epoch saves nothing
    assert isinstance(median.pruner(), optuna.pruners.MedianPruner)
    halving = PruneSettings("successive_halving", min_epochs=2, reduction_factor=3)
    assert halving.rungs(max_epochs=30) == [2, 6, 18]
    assert isinstance(halving.pruner(), optuna.pruners.SuccessiveHalvingPruner)
    percentile = PruneSettings("percentile", rung_epochs=(1,), keep_percent=25)
    assert isinstance(percentile.pruner(), optuna.pruners.PercentilePruner)
    assert PruneSettings.from_dict(median.to_dict()) == median  # as it travels in a points file


def pruning_grid(name: str, max_epochs: int, lrs: list[float], prune: dict, **extra) -> dict:
    return {
        "name": name,
        "base": {**TINY, **LEARNS_BY_THE_RUNG, "max_epochs": max_epochs},
        "grid": {"lr": lrs},
        "tune": ["lr"],
        "prune": prune,
        **extra,
    }


def by_lr(runs: list) -> dict[float, mlflow.entities.Run]:
    return {float(run.data.params["lr"]): run for run in runs if run.data.tags["hpcsweep.role"] == "point"}


def assert_pruned_at_the_rung(uri: str, runs: dict[float, mlflow.entities.Run], max_epochs: int) -> None:
    """The hopeless point stopped after the rung epoch, KILLED and tagged; the others trained every epoch."""
    hopeless = runs.pop(HOPELESS_LR)
    assert hopeless.info.status == "KILLED" and hopeless.data.tags["hpcsweep.pruned_at_epoch"] == str(RUNG)
    assert len(history(uri, hopeless.info.run_id, "val/acc")) == RUNG
    assert "total_time_s" in hopeless.data.metrics
    for run in runs.values():
        assert run.info.status == "FINISHED" and "hpcsweep.pruned_at_epoch" not in run.data.tags
        assert len(history(uri, run.info.run_id, "val/acc")) == max_epochs
    assert {run.data.tags["hpcsweep.tuned"] for run in [hopeless, *runs.values()]} == {"lr"}


def trial_states(project: Path, name: str) -> list[str]:
    """The states of the grid's Optuna trials, read from its journal as the launcher placed it."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "runs" / name / "pruning.optuna-journal"))
    )
    return sorted(trial.state.name for trial in optuna.load_study(study_name=name, storage=storage).trials)


@pytest.mark.slow
def test_a_hopeless_local_point_stops_at_the_first_rung_shows_as_pruned_and_is_not_rerun(prepared, tracking_server):
    project = prepared.parent.parent
    name = f"prunelocal{os.getpid()}"
    grid = write_grid(project, pruning_grid(name, 3, [*SANE_LRS, HOPELESS_LR], PRUNE_AT_RUNG))
    done = hpcsweep(["grid", str(grid)], project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    [verdict] = [line for line in done.stdout.splitlines() if line.startswith("pruned at epoch")]
    assert verdict.startswith(f"pruned at epoch {RUNG}: val/acc ") and "below the median of its peers" in verdict
    assert verdict.endswith("over 2 finished points (rule median)")
    runs = by_lr(point_runs(tracking_server, name))
    hopeless = runs[HOPELESS_LR].info.run_id
    assert_pruned_at_the_rung(tracking_server, runs, max_epochs=3)
    assert trial_states(project, name) == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert RunFolder.under(project / "checkpoints", hopeless).resumable_run_id() is None  # over, like a finished one

    status = hpcsweep(["status", name], project, tracking_server)
    assert status.returncode == 0, status.stderr
    [row] = [line for line in status.stdout.splitlines() if hopeless in line]
    assert row.startswith("PRUNED ") and row.endswith(f"(pruned at epoch {RUNG})") and "log:" not in status.stdout
    assert status.stdout.splitlines()[-1] == "3 points: 2 FINISHED, 1 PRUNED"

    again = hpcsweep(["grid", str(grid)], project, tracking_server)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-3000:]
    assert len(point_runs(tracking_server, name)) == 4  # the launch run and the three points: none added

    report = hpcsweep(["report", "--grid", name, "--out", str(project / "report")], project, tracking_server)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((project / "report" / "summary.json").read_text())
    assert summary["pruned_runs"] == 1 and summary["device_hours_saved"] > 0  # its third epoch, not run


@pytest.mark.slurm
@pytest.mark.slow
def test_a_hopeless_point_of_a_slurm_array_is_judged_against_the_tasks_before_it(
    prepared, slurm_cluster, tracking_server
):
    project = prepared.parent.parent
    name = f"prunearray{os.getpid()}"
    resources = {"cpus_per_task": 1, "mem": "2G", "time": "00:20:00", "partition": "debug", "max_parallel": 1}
    prune = {**PRUNE_AT_RUNG, "startup_points": 1}
    grid = write_grid(project, pruning_grid(name, 3, [SANE_LRS[0], HOPELESS_LR], prune, slurm=resources))
    done = launch_on_cluster(grid, project, tracking_server)
    assert done.returncode == 0, done.stderr[-3000:]
    wait_until(lambda: settled(tracking_server, name, 2), 600, "both array tasks to end")
    runs = by_lr(children(tracking_server, name))
    hopeless = runs[HOPELESS_LR].info.run_id
    assert_pruned_at_the_rung(tracking_server, runs, max_epochs=3)
    log = Path(mlflow.MlflowClient(tracking_server).get_run(hopeless).data.tags["slurm_log"]).read_text()
    assert f"pruned at epoch {RUNG}: val/acc " in log

    status = hpcsweep(["status", name], project, tracking_server, env=environment_with_slurm(tracking_server))
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "2 points: 1 COMPLETED, 1 PRUNED"
    again = launch_on_cluster(grid, project, tracking_server)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-3000:]

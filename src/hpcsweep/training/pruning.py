"""Early stopping of a grid point far behind its peers: the training side of a grid's `prune:`.

After each validation, global rank 0 reports the epoch's val/acc to the point's Optuna trial
(step = the epoch, counted from 1) and, after a rung epoch, asks the grid's pruner whether to
stop; the answer is broadcast, so that every DDP rank stops after the same epoch. Only rank 0
talks to Optuna. A point's trial carries its MLflow run id (user attribute `run_id`): a job that
SLURM requeued finds its trial again and goes on reporting into it. When fit ends, the trial is
told how: COMPLETE with the best val/acc, PRUNED, or FAIL; a requeued training leaves it running
for its next attempt.
"""

from __future__ import annotations

import statistics

import lightning as L
import numpy as np
import optuna
from optuna.trial import TrialState

from hpcsweep.training.prune_settings import RUN_ID_ATTRIBUTE, PruneSettings, journal_storage, open_study

ACCURACY = "val/acc"


def point_trial(settings: PruneSettings, run_id: str) -> optuna.Trial:
    """The run's trial in the grid's study: the one an earlier attempt of the run opened (a requeued
    job), or a new one."""
    storage = journal_storage(settings)
    study = open_study(settings, storage)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(RUN_ID_ATTRIBUTE) == run_id:
            study_id = storage.get_study_id_from_name(settings.study)
            # Optuna has no call that reopens a running trial; Trial(study, trial_id) is its public
            # class built as study.ask builds it, with the id from the storage's public API
            return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    trial = study.ask()
    trial.set_user_attr(RUN_ID_ATTRIBUTE, run_id)
    return trial


def verdict(settings: PruneSettings, study: optuna.Study, epoch: int, value: float) -> str:
    """The line that says why the point stops: its val/acc beside its peers' at the same epoch."""
    stopped = f"pruned at epoch {epoch}: {ACCURACY} {value:.2f}"
    if settings.rule == "successive_halving":
        judged = [t for t in study.get_trials(deepcopy=False) if epoch in t.intermediate_values]
        return (
            f"{stopped} not in the top 1/{settings.reduction_factor} of the {len(judged)} points judged at "
            f"this epoch (rule successive_halving)"
        )
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    peers = [t.intermediate_values[epoch] for t in finished if epoch in t.intermediate_values]
    if settings.rule == "median":
        median = statistics.median(peers)
        return f"{stopped} below the median of its peers, {median:.2f} over {len(peers)} finished points (rule median)"
    threshold = np.percentile(peers, 100 - settings.keep_percent)
    return (
        f"{stopped} outside the top {settings.keep_percent:g}% of its peers (below {threshold:.2f}, over "
        f"{len(peers)} finished points; rule percentile)"
    )


class Pruning(L.Callback):
    """Report each epoch's val/acc, stop after a rung epoch when the pruner says so (`pruned_at`)."""

    def __init__(self, settings: PruneSettings, run_id: str | None, max_epochs: int):
        self.settings, self.run_id = settings, run_id
        self.rungs = settings.rungs(max_epochs)
        self.trial: optuna.Trial | None = None  # rank 0's
        self.pruned_at: int | None = None  # the epoch (from 1) after which training stopped

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial = point_trial(self.settings, self.run_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch, stop = trainer.current_epoch + 1, False
        if self.trial is not None:
            value = float(trainer.callback_metrics[ACCURACY])
            self.trial.report(value, epoch)
            stop = epoch in self.rungs and self.trial.should_prune()
            if stop:
                print(verdict(self.settings, self.trial.study, epoch, value), flush=True)
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True
            self.pruned_at = epoch

    def tell(self, status: str, best_val_acc: float | None) -> None:
        """Tell the trial how the training ended (its run's `status`); a requeued training (SCHEDULED)
        keeps its trial running for the next attempt."""
        if self.trial is None or status == "SCHEDULED":
            return
        study = self.trial.study
        if status == "FINISHED" and best_val_acc is not None:
            study.tell(self.trial, best_val_acc)
        elif status == "KILLED" and self.pruned_at is not None:
            study.tell(self.trial, state=TrialState.PRUNED)
        else:
            study.tell(self.trial, state=TrialState.FAIL)

"""What a grid's `prune:` asks for, and the Optuna study every point of the grid reports to.

Early stopping of hopeless points is Optuna's (its pruners, maintained and tested there): this
module says which pruner a grid file means, at which epochs ("rungs") a point is judged, how the
settings travel to the jobs in a points file, and where the study lives: an Optuna journal file
on the file system the jobs share, one study per grid, so that SLURM array tasks on different
nodes see each other's reports.

No torch, and no Optuna until a study is opened: the grid launcher reads these settings.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

# the tag of a pruned run: the epoch (1-based) after which it was stopped
PRUNED_AT_EPOCH = "hpcsweep.pruned_at_epoch"
# the Optuna trial's user attribute naming its MLflow run: a requeued job finds its trial by it
RUN_ID_ATTRIBUTE = "run_id"
RULES = ("median", "percentile", "successive_halving")


@dataclass(frozen=True)
class PruneSettings:
    rule: str  # one of RULES
    rung_epochs: tuple[int, ...] = ()  # median, percentile: the epochs a point is judged after
    startup_points: int = 5  # median, percentile: nothing is stopped before this many points finished
    keep_percent: float = 50.0  # percentile: a point outside the top keep_percent % of its peers stops
    min_epochs: int = 1  # successive_halving: the first rung
    reduction_factor: int = 4  # successive_halving: the top 1/reduction_factor go on at each rung
    study: str = ""  # the Optuna study: the grid's name
    journal: str = ""  # its journal file, an absolute path every job can reach

    def rungs(self, max_epochs: int) -> list[int]:
        """The epochs a point is judged after; never the last, where stopping saves nothing."""
        if self.rule == "successive_halving":
            ladder = (self.min_epochs * self.reduction_factor**rung for rung in itertools.count())
            return list(itertools.takewhile(lambda epoch: epoch < max_epochs, ladder))
        return [epoch for epoch in self.rung_epochs if epoch < max_epochs]

    def pruner(self):
        """The Optuna pruner the rule means; steps are epochs, counted from 1."""
        import optuna

        if self.rule == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=self.min_epochs, reduction_factor=self.reduction_factor
            )
        first_rung = self.rung_epochs[0]
        if self.rule == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.startup_points, n_warmup_steps=first_rung)
        return optuna.pruners.PercentilePruner(
            self.keep_percent, n_startup_trials=self.startup_points, n_warmup_steps=first_rung
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneSettings:
        return cls(**{**data, "rung_epochs": tuple(data.get("rung_epochs") or ())})


def journal_storage(settings: PruneSettings):
    """The study's storage: Optuna's journal file, written under O_EXCL lock files, which NFSv3 and
    later honour (the journal sits on the cluster's shared file system)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalStorage(JournalFileBackend(settings.journal, lock_obj=JournalFileOpenLock(settings.journal)))


def open_study(settings: PruneSettings, storage=None):
    """The grid's study in `storage` (default: its journal), created by the first caller and loaded
    by the others; direction maximize: points report val/acc."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per study and trial in job logs
    return optuna.create_study(
        storage=storage or journal_storage(settings),
        study_name=settings.study,
        direction="maximize",
        pruner=settings.pruner(),
        load_if_exists=True,
    )

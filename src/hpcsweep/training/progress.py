"""What a training shows while it runs: a live bar on a terminal, one plain line per epoch elsewhere.

At a terminal, Lightning's own Rich progress bar (the one Lightning picks itself when rich is
installed; it comes with DVC), one bar left per epoch with that epoch's `train/loss` and `val/acc`.
A SLURM job log, a pipe or DVC's captured output gets no bar (carriage returns and escape codes turn
a log into noise) but one line per epoch, flushed at once, with the metric names MLflow shows, so
that `grep val/acc` and `tail -f` work on a job log:

    epoch 3/30  train/loss 1.2340  val/acc 0.6120  12.3 s/epoch  ETA 5m10s

Both are Lightning progress bars, so Lightning shows them on global rank 0 only.
"""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from hpcsweep.durations import short_duration, time_left

SHOWN_METRICS = ("train/loss", "val/acc")


def progress_display() -> ProgressBar:
    """The bar when stderr is a terminal (where it draws), the epoch lines on stdout otherwise."""
    return EpochBar() if sys.stderr.isatty() else EpochLines()


def shown_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The latest epoch's figures of SHOWN_METRICS that exist yet (none before the first epoch ends)."""
    return {name: float(trainer.callback_metrics[name]) for name in SHOWN_METRICS if name in trainer.callback_metrics}


class EpochBar(RichProgressBar):
    """Lightning's Rich bar on stderr, each epoch's bar kept, showing SHOWN_METRICS (the module
    logs nothing to the progress bar itself)."""

    def __init__(self) -> None:
        super().__init__(leave=True, console_kwargs={"stderr": True})

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        return shown_metrics(trainer)


class EpochLines(ProgressBar):
    """One line per finished epoch (validation included) on stdout: figures, pace and time left."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.epoch_started = 0.0
        self.durations: list[float] = []  # of the epochs run by this process (a resumed fit starts anew)

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a fit resumed mid-epoch enters that epoch without on_train_epoch_start
        self.epoch_started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates before this hook: val/acc is this epoch's
        self.durations.append(time.monotonic() - self.epoch_started)
        if self.enabled:
            print(self.epoch_line(trainer), flush=True)  # flushed: stdout into a file is block-buffered

    def epoch_line(self, trainer: L.Trainer) -> str:
        done = trainer.current_epoch + 1
        # the first epoch also pays one-off costs (the micro-batch probe, cuDNN's autotuning, compiling)
        steady = self.durations[1:] or self.durations
        return "  ".join(
            [
                f"epoch {done}/{trainer.max_epochs}",
                *(f"{name} {value:.4f}" for name, value in shown_metrics(trainer).items()),
                f"{self.durations[-1]:.1f} s/epoch",
                f"ETA {short_duration(time_left(steady, trainer.max_epochs - done))}",
            ]
        )

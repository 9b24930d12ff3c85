"""What long work shows while it runs: epoch lines in a log, Lightning's bar at a terminal, the
download's tenths, the local executor's point lines; Lightning's device lines kept out."""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import re
import struct
import subprocess
import sys
import termios
import uuid

import lightning as L
import pytest
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, TensorDataset

from helpers.lightning_fit import learnable_batch, module_for
from helpers.project import ROOT
from helpers.runs import QUICK, hpcsweep, overrides
from hpcsweep.data.cifar10 import download, file_md5
from hpcsweep.durations import short_duration
from hpcsweep.grid.executors.local import outcome_line
from hpcsweep.training.progress import EpochLines
from hpcsweep.training.train import quiet_known_warnings

EPOCH_LINE = re.compile(r"epoch \d/2  train/loss \d+\.\d{4}  val/acc [01]\.\d{4}  \d+\.\d s/epoch  ETA \d+s")

# build_trainer's Trainer fitting a few 8x8 images: the display a terminal gets, without data or MLflow
FIT_AT_A_TERMINAL = """
import sys
from pathlib import Path
from torch.utils.data import DataLoader, TensorDataset
from helpers.lightning_fit import learnable_batch, module_for
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.training.train import build_trainer, quiet_known_warnings

quiet_known_warnings()
project = Path(sys.argv[1])
module = module_for(project, "max_epochs=2", "batch_size=16", "base_batch_size=16", "precision=32-true")
batches = DataLoader(TensorDataset(*learnable_batch(32)), batch_size=16)
build_trainer(module.config, RunFolder.under(project / "checkpoints", "run"), []).fit(module, batches, batches)
"""


@pytest.mark.slow
def test_a_training_into_a_log_prints_one_line_per_epoch_and_no_device_lines(prepared, tracking_server):
    keys = [*QUICK, "max_epochs=2", "limit_train_samples=120", f"tracking.experiment=progress-{uuid.uuid4().hex[:8]}"]
    done = hpcsweep(["train", *overrides(*keys)], prepared.parent.parent, tracking_server)  # piped: no terminal
    assert done.returncode == 0, done.stderr[-3000:]
    epoch_lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert all(EPOCH_LINE.fullmatch(line) for line in epoch_lines), epoch_lines
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]  # one line per epoch
    assert epoch_lines[-1].endswith("ETA 0s")
    output = done.stdout + done.stderr
    assert "\r" not in output and "\x1b[" not in output  # no bar drawn into the log
    for routine in ("GPU available", "TPU available", "Loading `train_dataloader`", "Tip:"):
        assert routine not in output
    assert "`Trainer.fit` stopped: `max_epochs=2` reached" in done.stderr  # Lightning's other lines stay


@pytest.mark.slow
def test_a_training_at_a_terminal_draws_lightnings_bar_with_val_acc(project):
    output = run_in_terminal([sys.executable, "-c", FIT_AT_A_TERMINAL, str(project)], columns=160)
    assert "Epoch 1/1" in output and "val/acc" in output and "train/loss" in output  # Rich's, 0-based
    assert not re.search(r"^epoch \d", output, re.MULTILINE)  # no log lines at a terminal


def test_lightnings_line_naming_each_ranks_gpus_is_kept_out_and_its_warnings_stay(monkeypatch):
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # Lightning sets it below; restored after
    quiet_known_warnings()
    logger = logging.getLogger(CUDAAccelerator.__module__)
    seen = logging.handlers.BufferingHandler(capacity=100)  # on the logger itself: after its filters
    logger.addHandler(seen)
    try:
        CUDAAccelerator.set_nvidia_flags(local_rank=0)  # logs "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [...]"
        logger.warning("a real warning")
    finally:
        logger.removeHandler(seen)
    assert [record.getMessage() for record in seen.buffer] == ["a real warning"]


def run_in_terminal(command: list[str], columns: int) -> str:
    """Everything `command` writes to a pseudo-terminal `columns` wide, as a terminal receives it."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "TERM": "xterm-256color"}
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, env=environment)
    os.close(terminal)
    received = bytearray()
    while True:  # read as it comes: a full terminal buffer would block the writer
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:  # EIO: the process and every copy of the terminal are gone
            break
        if not chunk:
            break
        received += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0, received.decode(errors="replace")[-3000:]
    return received.decode(errors="replace")


def test_a_download_into_a_log_prints_a_line_per_tenth(tmp_path, capsys):
    source = tmp_path / "served.tar.gz"
    source.write_bytes(os.urandom(25 << 20))  # 25 reads of 1 MiB: more than one per tenth
    download(tmp_path / "raw", url=source.as_uri(), md5=file_md5(source))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("downloading ")]
    percents = [int(re.fullmatch(r"downloading cifar-10-python\.tar\.gz: (\d+)% \(.* MB\)", line)[1]) for line in lines]
    assert [percent // 10 for percent in percents] == list(range(1, 11))  # one line per tenth, in order
    assert lines[-1].endswith("100% (26.2 of 26.2 MB)")


def test_durations_read_as_people_say_them():
    assert [short_duration(s) for s in (0.4, 42, 59.6, 310, 3599, 7500)] == [
        "0s",
        "42s",
        "1m00s",
        "5m10s",
        "59m59s",
        "2h05m",
    ]


def test_a_point_line_gives_its_outcome_and_the_time_left_from_the_mean_point():
    assert outcome_line(1, 6, 0, [100.0, 120.0]) == "point 2/6 done in 2m00s (exit 0); about 7m20s left"
    assert outcome_line(2, 3, 1, [60.0, 60.0, 3.0]) == "point 3/3 failed in 3s (exit 1)"  # the last: nothing left
    assert outcome_line(0, 2, -9, [5.0]).startswith("point 1/2 failed in 5s (signal 9)")


class Interrupted(Exception):
    pass


class StopMidEpoch(L.Callback):
    """Saves a checkpoint after the first batch of the first epoch and stops the fit there, as a
    SLURM requeue does: the next fit resumes inside that epoch."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        if trainer.current_epoch == 0 and batch_index == 0:
            trainer.save_checkpoint(self.path)
            raise Interrupted


def test_an_epoch_resumed_mid_way_prints_its_own_duration_not_the_machines_uptime(project, tmp_path, capsys):
    batches = DataLoader(TensorDataset(*learnable_batch(32)), batch_size=16)
    checkpoint = tmp_path / "mid-epoch.ckpt"
    settings = ("max_epochs=1", "batch_size=16", "base_batch_size=16", "precision=32-true")

    def trainer(callbacks):
        return L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[EpochLines(), *callbacks],
        )

    with pytest.raises(Interrupted):
        trainer([StopMidEpoch(checkpoint)]).fit(module_for(project, *settings), batches, batches)
    capsys.readouterr()
    trainer([]).fit(module_for(project, *settings), batches, batches, ckpt_path=checkpoint)
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    seconds = float(re.search(r"(\d+\.\d) s/epoch", line).group(1))
    assert seconds < 60, line  # the resumed epoch's few batches, not time.monotonic() since boot

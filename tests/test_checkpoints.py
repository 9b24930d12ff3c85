"""Checkpoints survive a full disk and damage: written whole or not at all, resumed from the newest that loads."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import mlflow
import pytest
import torch

from helpers.project import require
from helpers.runs import QUICK
from hpcsweep.config import load_config
from hpcsweep.errors import UserError
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.training.checkpoint_io import AtomicCheckpointIO, first_loadable


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), as a nearly full checkpoint volume; needs root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # detached even if a file is still open


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_whole(small_disk):
    checkpoint_io, path = AtomicCheckpointIO(), small_disk / "last.ckpt"
    checkpoint_io.save_checkpoint({"weights": torch.arange(50_000.0)}, path)  # 200 kB
    with pytest.raises(OSError):
        checkpoint_io.save_checkpoint({"weights": torch.zeros(300_000)}, path)  # 1.2 MB: the disk fills
    assert torch.equal(torch.load(path)["weights"], torch.arange(50_000.0))
    assert os.listdir(small_disk) == ["last.ckpt"]  # no temporary left to fill the disk


def unfinished_folder(path) -> RunFolder:
    folder = RunFolder(path)
    folder.path.mkdir(exist_ok=True)
    folder.write_state(run_id="abc", finished=False)
    return folder


def save(path, value: float, mtime: float) -> None:
    AtomicCheckpointIO().save_checkpoint({"value": value}, path)
    os.utime(path, (mtime, mtime))


def test_resume_skips_a_damaged_checkpoint_for_the_next_newest_and_says_so(tmp_path, caplog):
    folder, now = unfinished_folder(tmp_path), time.time()
    save(tmp_path / "best.ckpt", 1.0, now - 30)
    save(tmp_path / "hpc_ckpt_1.ckpt", 2.0, now - 20)
    save(tmp_path / "last.ckpt", 3.0, now - 10)
    with open(tmp_path / "last.ckpt", "r+b") as damaged:  # cut short, as by a copy that was killed
        damaged.truncate(100)
    assert folder.resume_candidates() == [tmp_path / name for name in ("last.ckpt", "hpc_ckpt_1.ckpt", "best.ckpt")]
    assert first_loadable(folder.resume_candidates()) == tmp_path / "hpc_ckpt_1.ckpt"
    assert f"skipping checkpoint {tmp_path / 'last.ckpt'}: it does not load" in caplog.text


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "\x00\xff"])
def test_an_unreadable_run_state_is_a_warning_and_the_checkpoints_still_resume(tmp_path, caplog, content):
    folder = unfinished_folder(tmp_path)
    save(tmp_path / "last.ckpt", 3.0, time.time())
    (tmp_path / "run.json").write_bytes(content.encode("latin-1"))
    assert folder.read_state() == {} and folder.resumable_run_id() is None
    assert folder.resume_candidates() == [tmp_path / "last.ckpt"]
    assert f"{tmp_path / 'run.json'} is unreadable" in caplog.text
    folder.write_state(run_id="def", finished=False)  # the next attempt records its run again
    assert json.loads((tmp_path / "run.json").read_text()) == {"run_id": "def", "finished": False}


@pytest.mark.parametrize("fate", ["made in another store", "deleted"])
def test_resuming_a_run_this_store_lacks_is_one_line_and_keeps_the_checkpoints(prepared, monkeypatch, fate):
    """An interrupted training's folder names its run; trained again against a store that lacks that
    run (the user switched MLFLOW_TRACKING_URI) or holds it deleted, it says so instead of a traceback."""
    from hpcsweep.training.train import run_folder_for, train

    project = prepared.parent.parent
    monkeypatch.chdir(project)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = load_config("params.yaml", QUICK)
    run_id = uuid.uuid4().hex
    if fate == "deleted":
        client = mlflow.MlflowClient(uri)
        run_id = client.create_run(client.create_experiment(f"gone-{run_id[:8]}")).info.run_id
        client.delete_run(run_id)
    folder = run_folder_for(config, None)
    folder.path.mkdir(parents=True)
    folder.write_state(run_id=run_id, finished=False)
    save(folder.path / "last.ckpt", 3.0, time.time())
    with pytest.raises(UserError) as refused:
        train(config)
    message = str(refused.value)
    assert "\n" not in message and run_id in message and str(folder.path) in message, message
    assert ("deleted" in message) == (fate == "deleted"), message
    assert (folder.path / "last.ckpt").is_file()  # nothing lost: the right store can still resume it

"""Files and folders written all-or-nothing get the permissions the user's umask gives a new file.

On a shared project folder the umask is how a user says who may read what she writes (022:
everyone, 002: her group too, 077: no one); reports, points files and job scripts follow it like
any file `open()` creates. What holds a secret stays readable by its owner alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.runs import TINY, environment, grid_command, write_grid
from hpcsweep.atomic import PRIVATE, atomic_dir, atomic_file
from hpcsweep.tracking.spool import write_header

UMASKS = [0o022, 0o002, 0o077]


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", UMASKS)
def test_a_file_written_atomically_gets_what_open_gives_a_new_file_even_where_it_replaces_one(tmp_path, mask):
    with umask(mask):
        opened = tmp_path / "opened.txt"
        opened.write_text("by open()")
        written = tmp_path / "written.txt"
        with atomic_file(written) as temporary:
            temporary.write_text("first")
        assert mode(written) == mode(opened) == 0o666 & ~mask
        written.chmod(0o600)  # an earlier version's private output heals at the next write
        with atomic_file(written) as temporary:
            temporary.write_text("second")
        assert mode(written) == 0o666 & ~mask and written.read_text() == "second"


@pytest.mark.parametrize("mask", UMASKS)
def test_a_folder_written_atomically_and_its_files_get_what_mkdir_and_open_give(tmp_path, mask):
    with umask(mask):
        made = tmp_path / "made"
        made.mkdir()
        report = tmp_path / "reports"
        for _ in range(2):  # new, then replacing the earlier one
            with atomic_dir(report) as folder:
                (folder / "summary.json").write_text("{}")
            assert mode(report) == mode(made) == 0o777 & ~mask
            assert mode(report / "summary.json") == 0o666 & ~mask


@pytest.mark.parametrize("mask", UMASKS)
def test_a_file_holding_a_secret_stays_its_owners_alone_whatever_the_umask(tmp_path, mask):
    with umask(mask):
        with atomic_file(tmp_path / "token", mode=PRIVATE) as temporary:
            temporary.write_text("secret")
        spool = tmp_path / "mlflow-spool.jsonl"
        write_header(spool, "http://alice:***@server:5000", replace=False)  # the spool's header is rewritten whole
        assert mode(tmp_path / "token") == mode(spool) == 0o600


def launch_folder_modes(project: Path, name: str, uri: str, mask: int) -> dict[str, int]:
    """A dry run of a one-point SLURM grid under `mask`: the modes of what it wrote, by kind."""
    grid = write_grid(project, {"name": name, "base": TINY, "seeds": [0]})
    done = subprocess.run(
        grid_command(grid, "--executor", "slurm", "--dry-run"),
        cwd=project,
        env=environment(uri),
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(mask),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [folder] = (project / "runs" / name).iterdir()
    return {
        "launch folder": mode(folder),
        "logs": mode(folder / "logs"),
        "points": mode(folder / "points-0.json"),
        "script": mode(folder / "job-0.sbatch"),
    }


def test_a_launch_writes_its_points_and_job_scripts_for_the_group_unless_a_password_is_in_them(prepared):
    project = prepared.parent.parent
    modes = launch_folder_modes(project, "shared", f"sqlite:///{project / 'mlflow.db'}", 0o002)
    assert modes == {"launch folder": 0o775, "logs": 0o775, "points": 0o664, "script": 0o664}

    # the tracking URI from the environment, password and all, goes into the points file jobs read
    modes = launch_folder_modes(project, "private", "http://alice:hunter2@127.0.0.1:5000", 0o022)
    assert modes == {"launch folder": 0o755, "logs": 0o755, "points": 0o600, "script": 0o644}

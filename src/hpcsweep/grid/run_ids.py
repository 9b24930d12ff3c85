"""Each point's MLflow run is made exactly once, by whoever comes first: the launcher or the task.

A launch submits its job arrays first and creates the child runs after, so that a 1000-point grid
is queued in seconds rather than after a minute of round trips to the tracking server. A task may
therefore start before the launcher reached its point. Both sides go through the same claim on the
shared file system, next to the points file the task reads: `run-ids/points-B-T.claim`, created
exclusively (O_EXCL, atomic on local file systems and NFSv3+), names the one process that creates
the run; the run id it writes (atomically, `run-ids/points-B-T`) is what everyone else reads: the
other ranks of a DDP task, a requeued or restarted task, the launcher that lost the race. So a
requeue, a relaunch or a race never makes a second run for one point of one launch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from hpcsweep.atomic import atomic_file
from hpcsweep.errors import UserError

FOLDER = "run-ids"
WAIT_S = 300  # the claimant creates a run in well under a second, even from a busy launcher
POLL_S = 0.5


def id_file(points_file: Path, task: int) -> Path:
    return points_file.parent / FOLDER / f"{points_file.stem}-{task}"


def recorded(points_file: Path, task: int) -> str | None:
    """The run id of task `task` of this points file, once its creator has written it."""
    try:
        return id_file(points_file, task).read_text().strip() or None
    except FileNotFoundError:
        return None


def claim(points_file: Path, task: int) -> bool:
    """True for the one process that gets to create the task's run (the first to ask)."""
    path = id_file(points_file, task).with_suffix(".claim")
    path.parent.mkdir(exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def record(points_file: Path, task: int, run_id: str) -> None:
    with atomic_file(id_file(points_file, task)) as temporary:
        temporary.write_text(run_id + "\n")


def release(points_file: Path, task: int) -> None:
    """Give a claim back whose run could not be created, so that the other side may try."""
    id_file(points_file, task).with_suffix(".claim").unlink(missing_ok=True)


def abandoned(points_file: Path, task: int, older_than_s: float = WAIT_S) -> bool:
    """A claim still without a run id after `older_than_s`: the process that took it died making
    the run (a live one makes it in well under a second)."""
    try:
        age = time.time() - id_file(points_file, task).with_suffix(".claim").stat().st_mtime
    except FileNotFoundError:
        return False
    return age > older_than_s and not recorded(points_file, task)


def create_once(points_file: Path, task: int, create: Callable[[], str]) -> str | None:
    """Create the task's run with `create` if nobody has claimed it; its id, or None where another
    process holds the claim (the launcher moves on: the task makes its own run)."""
    if not claim(points_file, task):
        return None
    try:
        run_id = create()
    except BaseException:
        release(points_file, task)
        raise
    record(points_file, task, run_id)
    return run_id


def run_id_of(points_file: Path, task: int, create: Callable[[], str], wait_s: float = WAIT_S) -> str:
    """The task's run: the one already made, one made now by `create`, or the one that the process
    holding the claim is making (waited for)."""
    existing = recorded(points_file, task)
    if existing:
        return existing
    created = create_once(points_file, task, create)
    if created:
        return created
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        existing = recorded(points_file, task)
        if existing:
            return existing
        time.sleep(POLL_S)
    claim_file = id_file(points_file, task).with_suffix(".claim")
    raise UserError(
        f"{points_file}[{task}]: no run id after {wait_s:.0f} s although {claim_file} says a process is "
        f"creating the run; it died on the way: delete that file and relaunch the grid"
    )

"""The logging spool: what a training logs is on local disk before it is sent anywhere.

MLflow has no offline mode: a log call against a server that is away raises, and autologging
drops the metric. So a training's writes go to a spool file in its checkpoint folder, one JSON
line per call, and are sent from there in order; the number of lines the server has accepted
is kept beside it. What could not be sent when training ended stays on disk for
`hpcsweep sync`, which starts after the last accepted line: nothing is sent twice, except a
batch whose answer was lost in flight, and the server drops such exact repeats of a metric
point (same key, value, timestamp and step) itself; params, tags, statuses and artifacts are
idempotent.

Record kinds (each with `run_id`): `metrics`/`params`/`tags` lists (one log_batch), `status`
(an update of the run's status and end time), `artifact` (a local file to upload).
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import threading
from pathlib import Path

from hpcsweep.atomic import atomic_file
from hpcsweep.errors import UserError
from hpcsweep.tracking.run_folder import SPOOL_FILE, RunFolder

log = logging.getLogger(__name__)


class Spool:
    """One run folder's spool: append records, take the unsent ones in order, mark them sent.

    Only one process sends from a spool at a time (`claim`): the training while it runs, else
    one `hpcsweep sync`.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files = RunFolder(self.folder)
        self.path = self.files.spool
        self._lock = threading.Lock()
        self._lock_file = None
        self.sent = 0
        self.uri: str | None = None
        self._unsent: collections.deque[dict] = collections.deque()

    def claim(self, uri: str | None = None, wait: bool = True) -> bool:
        """Become the one sender; read what earlier attempts left unsent. False if another holds it.

        `uri` is written as the spool's first line when the spool is new: where its records go.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.files.spool_lock, "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            return False
        header, records = read_records(self.path)
        if header is None:
            if uri is None:
                raise UserError(f"{self.path}: not a spool (no header line)")
            with self.path.open("a") as stream:
                stream.write(json.dumps({"uri": uri}) + "\n")
            header = {"uri": uri}
        self.uri = header["uri"]
        sent_path = self.files.spool_sent
        self.sent = int(sent_path.read_text()) if sent_path.is_file() else 0
        self._unsent.extend(records[self.sent :])
        return True

    def release(self) -> None:
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None

    def append(self, record: dict) -> None:
        """Write one record through to the file (it survives this process), then queue it."""
        line = json.dumps(record, allow_nan=True) + "\n"
        with self._lock:
            with self.path.open("a") as stream:
                stream.write(line)
            self._unsent.append(record)

    def unsent(self) -> list[dict]:
        with self._lock:
            return list(self._unsent)

    def mark_sent(self, count: int) -> None:
        """The oldest `count` unsent records are on the server (or rejected for good)."""
        with self._lock:
            for _ in range(count):
                self._unsent.popleft()
            self.sent += count
            with atomic_file(self.files.spool_sent) as temporary:
                temporary.write_text(str(self.sent))

    def reject(self, record: dict, reason: str) -> None:
        """Set aside a record the server refuses for good (a deleted run, an invalid value), so
        that it cannot block the records after it; it is kept, with the reason, for a person."""
        log.warning(
            "the tracking server refused a spooled record for good (%s); kept in %s",
            reason,
            self.files.spool_rejected,
        )
        with (self.files.spool_rejected).open("a") as stream:
            stream.write(json.dumps({"reason": reason, "record": record}) + "\n")


def read_records(path: Path) -> tuple[dict | None, list[dict]]:
    """The header and the records of a spool file; a last line cut short by a crash is ignored."""
    if not path.is_file():
        return None, []
    lines = path.read_text().splitlines(keepends=True)
    complete = [json.loads(line) for line in lines if line.endswith("\n")]
    if not complete or "uri" not in complete[0]:
        return None, []
    return complete[0], complete[1:]


def find_spools(path: Path) -> list[Path]:
    """Run folders under `path` (or `path` itself) that hold a spool."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder (give a checkpoint folder, default tracking.checkpoint_dir)")
    if (path / SPOOL_FILE).is_file():
        return [path]
    return sorted(spool.parent for spool in path.rglob(SPOOL_FILE))

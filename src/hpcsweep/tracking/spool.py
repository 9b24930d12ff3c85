"""The logging spool: what a training logs is on local disk before it is sent anywhere.

MLflow has no offline mode: a log call against a server that is away raises, and autologging
drops the metric. So a training's writes go to a spool file in its checkpoint folder, one JSON
line per call, and are sent from there in order; the number of lines the server has accepted
is kept beside it. What could not be sent when training ended stays on disk for
`hpcsweep sync`, which starts after the last accepted line: nothing is sent twice, except a
batch whose answer was lost in flight, and the server drops such exact repeats of a metric
point (same key, value, timestamp and step) itself; params, tags, statuses and artifacts are
idempotent.

The first line (the header) names the server the records were written for, without
credentials. Every file is its owner's alone (0600): records hold params and tags.

A crash, a kill or a full disk can cut a line short. A line is written whole or cut off again
(`append_line`), a torn last line left by a kill is cut off when the spool is claimed, and a
line an older version wrote onto a torn one is salvaged: one bad line never blocks the spool.
A sent count that cannot be trusted (empty, garbage, more than the records) sends everything
again, which the server's idempotence makes safe.

A training killed after an epoch's figures were spooled but before that epoch's checkpoint
repeats the epoch when it resumes. So a metric point (run, key, step) already in the spool is
not appended again: every epoch's figures are logged exactly once. MLflow's system metrics,
which count their steps from 0 in every attempt, are kept whatever their step.

Record kinds (each with `run_id`): `metrics`/`params`/`tags` lists (one log_batch), `status`
(an update of the run's status and end time), `artifact` (a local file to upload), `inputs`
(a log_inputs request body: the run's datasets).
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from hpcsweep.atomic import atomic_file
from hpcsweep.errors import UserError
from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.run_folder import SPOOL_FILE, RunFolder

OWNER_ONLY = 0o600
SYSTEM_METRICS = "system/"  # MLflow's system-metrics monitor: steps restart in every attempt

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
        self._lock_fd: int | None = None
        self.sent = 0
        self.uri: str | None = None
        self._unsent: collections.deque[dict] = collections.deque()
        self._logged_points: set[tuple[str, str, int]] = set()  # (run, key, step) of every metric spooled

    def claim(self, uri: str | None = None, wait: bool = True) -> bool:
        """Become the one sender; read what earlier attempts left unsent. False if another holds it.

        `uri` is the server configured now: it wins over the header, which is rewritten to name it
        (the header is only used when no server is configured). Raises UserError for a file that
        is not a spool.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.files.spool_lock, os.O_RDWR | os.O_CREAT, OWNER_ONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        try:
            self._load(uri)
        except BaseException:
            self.release()
            raise
        return True

    def _load(self, uri: str | None) -> None:
        for path in (self.path, self.files.spool_sent, self.files.spool_rejected):
            if path.is_file():
                path.chmod(OWNER_ONLY)  # an older version wrote them readable by all
        header, records = parse_spool(self.path, cut_torn_tail(self.path))
        stored = header["uri"] if header else None
        if uri is None and stored is None:
            raise UserError(f"{self.path}: not a spool (no header line naming its server)")
        if uri and stored and redact(uri) != redact(stored):
            log.warning("%s: written for %s; sending to %s as configured now", self.path, stored, redact(uri))
        self.uri = uri or stored
        if stored != redact(self.uri):
            write_header(self.path, redact(self.uri), replace=header is not None)
        self.sent = read_sent_count(self.files.spool_sent, len(records))
        self._unsent.extend(records[self.sent :])
        for record in records:
            self._logged_points |= metric_points(record)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append(self, record: dict) -> None:
        """Write one record through to the file (it survives this process), then queue it; metric
        points the spool already holds (a repeated epoch's) are left out."""
        with self._lock:
            record = without_points(record, self._logged_points)
            if record is None:
                return
            append_line(self.path, json.dumps(record, allow_nan=True) + "\n")
            self._logged_points |= metric_points(record)
            self._unsent.append(record)

    def unsent(self) -> list[dict]:
        with self._lock:
            return list(self._unsent)

    def mark_sent(self, count: int) -> None:
        """The oldest `count` unsent records are on the server (or rejected for good). The count
        on disk comes first: if it cannot be written, they stay unsent here too and are sent again."""
        with self._lock:
            with atomic_file(self.files.spool_sent, mode=OWNER_ONLY) as temporary:
                temporary.write_text(str(self.sent + count))
            self.sent += count
            for _ in range(count):
                self._unsent.popleft()

    def reject(self, record: dict, reason: str) -> None:
        """Set aside a record the server refuses for good (a deleted run, an invalid value), so
        that it cannot block the records after it; it is kept, with the reason, for a person."""
        log.warning(
            "the tracking server refused a spooled record for good (%s); kept in %s", reason, self.files.spool_rejected
        )
        append_line(self.files.spool_rejected, json.dumps({"reason": reason, "record": record}) + "\n")


def metric_point(run_id: object, metric: object) -> tuple[str, str, int] | None:
    """(run, key, step) of one spooled metric; None for a system metric or one not well formed
    (the sender sets those aside)."""
    if not (isinstance(metric, list | tuple) and len(metric) == 4 and isinstance(run_id, str)):
        return None
    key, _, _, step = metric
    if not isinstance(key, str) or not isinstance(step, int) or key.startswith(SYSTEM_METRICS):
        return None
    return run_id, key, step


def metric_list(record: dict) -> list:
    metrics = record.get("metrics")
    return metrics if isinstance(metrics, list) else []


def metric_points(record: dict) -> set[tuple[str, str, int]]:
    """The (run, key, step) of each metric in a log_batch record, system metrics excepted."""
    points = (metric_point(record.get("run_id"), metric) for metric in metric_list(record))
    return {point for point in points if point}


def without_points(record: dict, logged: set[tuple[str, str, int]]) -> dict | None:
    """`record` without the metric points in `logged`; None when nothing is left to log."""
    metrics = metric_list(record)
    fresh = [metric for metric in metrics if metric_point(record.get("run_id"), metric) not in logged]
    if len(fresh) == len(metrics):
        return record
    if not fresh and not record.get("params") and not record.get("tags"):
        return None
    return {**record, "metrics": fresh}


def append_line(path: Path, line: str) -> None:
    """Append `line` whole or not at all: a write cut short (a full disk, a quota) is cut off
    again before the error is raised, so that the next line starts a line of its own."""
    data = memoryview(line.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OWNER_ONLY)
    try:
        start = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def cut_torn_tail(path: Path) -> str:
    """The spool's complete lines; a last line a kill cut short is cut off the file, else the
    next append would continue it."""
    if not path.is_file():
        return ""
    with path.open("rb+") as stream:
        data = stream.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning("%s: cut off a last line cut short by a crash (%d bytes)", path, len(data) - complete)
            stream.truncate(complete)
    return data[:complete].decode(errors="replace")


def parse_spool(path: Path, text: str) -> tuple[dict | None, list[dict]]:
    """The header (None if the first line is not one) and the records of a spool's text."""
    lines = text.splitlines()
    first = as_record(lines[0]) if lines else None
    header = first if first and "uri" in first and "run_id" not in first else None
    start = 2 if header else 1
    parsed = (parse_line(path, number, line) for number, line in enumerate(lines[start - 1 :], start=start))
    return header, [record for record in parsed if record is not None]


def parse_line(path: Path, number: int, line: str) -> dict | None:
    """One record; an older version appended onto a torn line, so a bad line's intact end is kept."""
    record = as_record(line)
    if record is not None:
        return record
    for start in (index for index in range(1, len(line)) if line[index] == "{"):
        record = as_record(line[start:])
        if record is not None:
            log.warning("%s:%d: a line cut short, with a whole record after it: the record is kept", path, number)
            return record
    log.warning("%s:%d: not a record (a line cut short or damaged): skipped", path, number)
    return None


def as_record(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def write_header(path: Path, uri: str, replace: bool) -> None:
    """Name `uri` in the spool's first line, replacing the header there (`replace`) or not."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    with atomic_file(path, mode=OWNER_ONLY) as temporary:
        temporary.write_text(json.dumps({"uri": uri}) + "\n" + "".join(lines[1 if replace else 0 :]))


def read_sent_count(path: Path, total: int) -> int:
    """How many records the server has; a count that cannot be trusted sends them all again."""
    if not path.is_file():
        return 0
    text = path.read_text().strip()
    if text.isdigit() and int(text) <= total:
        return int(text)
    problem = f"counts {text} records sent, the spool holds {total}" if text.isdigit() else f"holds {text!r}"
    log.warning("%s: %s; sending all %d records again (the server drops exact repeats)", path, problem, total)
    return 0


def find_spools(path: Path) -> list[Path]:
    """Run folders under `path` (or `path` itself) that hold a spool."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder (give a checkpoint folder, default tracking.checkpoint_dir)")
    if (path / SPOOL_FILE).is_file():
        return [path]
    return sorted(spool.parent for spool in path.rglob(SPOOL_FILE))

"""`hpcsweep sync [PATH]`: send what trainings left in their spools while the server was away.

Each spool remembers how many of its records the server accepted, so a second sync, or a sync
of a spool the training itself finished sending, sends nothing. A spool a running training is
still sending from is left to it. The server configured now wins over the one a spool was
written for. A spool that cannot be read or sent is named, in one line, and the others are
still sent; the command then fails, naming it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hpcsweep.errors import UserError
from hpcsweep.tracking.credentials import redact_text
from hpcsweep.tracking.sender import ServerAway, send_unsent
from hpcsweep.tracking.spool import Spool, find_spools


@dataclasses.dataclass(frozen=True)
class SyncOutcome:
    folder: Path
    sent: int
    left: int
    problem: str = ""
    broken: bool = False  # could not be read at all

    def line(self) -> str:
        if self.broken:
            return f"{self.folder}: cannot be sent: {self.problem}"
        if not self.sent and not self.left and not self.problem:
            return f"{self.folder}: nothing to send"
        return (
            f"{self.folder}: sent {self.sent} records"
            + (f", {self.left} left" if self.left else "")
            + (f": {self.problem}" if self.problem else "")
        )


def sync_spools(path: Path, uri: str | None = None) -> list[SyncOutcome]:
    """Send every spool under `path` to `uri` (else to the server each spool names)."""
    return [sync_spool(folder, uri) for folder in find_spools(path)]


def sync_spool(folder: Path, uri: str | None) -> SyncOutcome:
    spool = Spool(folder)
    try:
        if not spool.claim(uri, wait=False):
            return SyncOutcome(folder, 0, 0, "skipped: a running training is sending it")
    except Exception as error:  # a damaged spool must not stop the others
        return SyncOutcome(folder, 0, 0, describe(error), broken=True)
    try:
        before, problem = len(spool.unsent()), ""
        try:
            send_unsent(spool)
        except Exception as error:  # ServerAway says where and why; anything else is named as it came
            problem = describe(error)
        left = len(spool.unsent())
        return SyncOutcome(folder, before - left, left, problem)
    finally:
        spool.release()


def describe(error: Exception) -> str:
    """One line: our own errors say what is wrong themselves, any other is named by its type."""
    text = redact_text(str(error))
    return text if isinstance(error, (UserError, ServerAway)) else f"{type(error).__name__}: {text}"


def sync_failure(outcomes: list[SyncOutcome]) -> str | None:
    """Why the command fails, naming every spool not wholly sent; None if all were."""
    failed = [outcome for outcome in outcomes if outcome.left or outcome.broken]
    if not failed:
        return None
    return (
        f"{sum(outcome.left for outcome in failed)} records are still unsent "
        f"({', '.join(str(outcome.folder) for outcome in failed)}); "
        "run `hpcsweep sync` again once the server answers (or the spool named above is fixed)"
    )

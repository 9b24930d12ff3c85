"""`hpcsweep sync [PATH]`: send what trainings left in their spools while the server was away.

Each spool remembers how many of its records the server accepted, so a second sync, or a sync
of a spool the training itself finished sending, sends nothing. A spool a running training is
still sending from is left to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hpcsweep.tracking.credentials import redact
from hpcsweep.tracking.sender import ServerAway, send_unsent
from hpcsweep.tracking.spool import Spool, find_spools


@dataclasses.dataclass(frozen=True)
class SyncOutcome:
    folder: Path
    sent: int
    left: int
    problem: str = ""

    def line(self) -> str:
        if not self.sent and not self.left and not self.problem:
            return f"{self.folder}: nothing to send"
        return (
            f"{self.folder}: sent {self.sent} records"
            + (f", {self.left} left" if self.left else "")
            + (f": {self.problem}" if self.problem else "")
        )


def sync_spools(path: Path, uri: str | None = None) -> list[SyncOutcome]:
    return [sync_spool(folder, uri) for folder in find_spools(path)]


def sync_spool(folder: Path, uri: str | None) -> SyncOutcome:
    spool = Spool(folder)
    if not spool.claim(wait=False):
        return SyncOutcome(folder, 0, 0, "skipped: a running training is sending it")
    try:
        spool.uri = uri or spool.uri
        before, problem = len(spool.unsent()), ""
        try:
            send_unsent(spool)
        except ServerAway as error:
            problem = f"{redact(spool.uri)} is unreachable ({error})"
        left = len(spool.unsent())
        return SyncOutcome(folder, before - left, left, problem)
    finally:
        spool.release()

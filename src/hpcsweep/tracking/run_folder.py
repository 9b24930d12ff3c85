"""One training's folder and every file name in it.

Each training owns a folder under `tracking.checkpoint_dir`, named after its MLflow run (when a
launcher created the run) or else its config hash, so that running the same training again after
an interruption finds it. It holds Lightning's checkpoints, `run.json` (which MLflow run the
attempt logged into and whether it finished) and the logging spool. Nothing else in the project
spells these names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from hpcsweep.atomic import atomic_file

LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best"  # Lightning's ModelCheckpoint filename, without .ckpt
REQUEUE_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's, written when SLURM signals a requeue
RUN_STATE = "run.json"
SPOOL_FILE = "mlflow-spool.jsonl"

log = logging.getLogger(__name__)


class RunFolder:
    """A training's folder: its checkpoints, its run state and its spool's files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state_was_lost = False  # run.json was there but unreadable: resume what the checkpoints hold

    @classmethod
    def under(cls, checkpoint_dir: str | Path, name: str) -> RunFolder:
        return cls(Path(checkpoint_dir) / name)

    # the logging spool (tracking/spool.py)
    @property
    def spool(self) -> Path:
        return self.path / SPOOL_FILE

    @property
    def spool_sent(self) -> Path:
        return self.path / "mlflow-spool.sent"

    @property
    def spool_rejected(self) -> Path:
        return self.path / "mlflow-spool.rejected"

    @property
    def spool_lock(self) -> Path:
        return self.path / "mlflow-spool.lock"

    @property
    def spooled_artifacts(self) -> Path:
        """Copies of files waiting for upload: the caller may delete its own before they are sent."""
        return self.path / "mlflow-spool-artifacts"

    # the run state: which MLflow run this folder's attempts log into
    def read_state(self) -> dict:
        path = self.path / RUN_STATE
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text())
            if isinstance(state, dict):
                return state
            problem = f"a JSON {type(state).__name__}, not an object"
        except (OSError, ValueError) as error:
            problem = str(error)
        if not self.state_was_lost:
            log.warning("hpcsweep: %s is unreadable (%s); this folder's run is taken as unfinished", path, problem)
        self.state_was_lost = True
        return {}

    def write_state(self, **state) -> None:
        merged = {**self.read_state(), **state}
        with atomic_file(self.path / RUN_STATE) as temporary:
            temporary.write_text(json.dumps(merged))

    def resumable_run_id(self) -> str | None:
        """The run of an interrupted attempt in this folder, if it did not finish."""
        state = self.read_state()
        return state.get("run_id") if not state.get("finished") else None

    # checkpoints
    @property
    def best_checkpoint(self) -> Path:
        return self.path / f"{BEST_CHECKPOINT}.ckpt"

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("*.ckpt"))

    def resume_candidates(self) -> list[Path]:
        """The checkpoints an unfinished attempt could resume from, newest first: last.ckpt (end of an
        epoch), the hpc_ckpt_N.ckpt Lightning writes mid-epoch when SLURM signals a requeue, and best
        (an earlier epoch, better than starting over)."""
        if self.resumable_run_id() is None and not self.state_was_lost:
            return []
        candidates = [self.path / LAST_CHECKPOINT, *self.path.glob(REQUEUE_CHECKPOINTS), self.best_checkpoint]
        return newest_first(path for path in candidates if path.is_file())

    def requeued_since(self, since: float) -> bool:
        """Lightning wrote a requeue checkpoint after `since` (a time.time()): SLURM requeued the job."""
        return any(path.stat().st_mtime >= since for path in self.path.glob(REQUEUE_CHECKPOINTS))

    def record_requeue(self, job: str | None, started: float) -> None:
        """The attempt that started at `started` was requeued as `job`: count it as stalled unless it
        finished an epoch (wrote last.ckpt), and keep only the newest requeue checkpoint."""
        last = self.path / LAST_CHECKPOINT
        progressed = last.is_file() and last.stat().st_mtime >= started
        stalled = 0 if progressed else self.stalled_requeues(job) + 1
        self.write_state(stalled_requeues={"job": job, "count": stalled})
        for older in newest_first(self.path.glob(REQUEUE_CHECKPOINTS))[1:]:
            older.unlink()

    def stalled_requeues(self, job: str | None) -> int:
        """How often in a row `job` was requeued without finishing an epoch. Another job (a relaunch,
        a resubmission by hand) starts from nothing."""
        stalled = self.read_state().get("stalled_requeues") or {}
        return stalled.get("count", 0) if stalled.get("job") == job else 0

    def remove_unfinished_checkpoints(self) -> None:
        """Temporaries of checkpoint writes a kill cut short (atomic.atomic_file's `.NAME.*.tmp`):
        as large as a checkpoint each, and never to be finished."""
        for temporary in self.path.glob(".*.ckpt.*.tmp"):
            temporary.unlink(missing_ok=True)

    def remove_checkpoints(self) -> None:
        """A finished run's checkpoints: left in place, Lightning would number new ones best-v1."""
        for stale in self.checkpoints():
            stale.unlink()


def newest_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda path: path.stat().st_mtime, reverse=True)

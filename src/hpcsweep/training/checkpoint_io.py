"""Checkpoints that are whole or absent, and a resume that survives one that is not.

Lightning's own save writes the checkpoint through fsspec, which builds it in `$TMPDIR` and moves
it; on a cluster the run folder is on NFS or Lustre and `$TMPDIR` is local, so the move is a copy
that first empties the old `last.ckpt`, and a job killed then (time limit, preemption, node
failure) leaves neither. `AtomicCheckpointIO` writes beside the checkpoint, fsyncs, and renames
into place (`atomic.atomic_file`). A checkpoint damaged some other way is skipped, with a
warning, in favour of the next newest (`first_loadable`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from hpcsweep.atomic import atomic_file

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint format, written to a temporary in the checkpoint's own folder,
    fsynced and renamed over the old file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # serialized first, as Lightning does: a full disk is then a plain OSError
        torch.save(checkpoint, buffer)
        with atomic_file(Path(path)) as temporary:
            temporary.write_bytes(buffer.getbuffer())


def first_loadable(candidates: list[Path]) -> Path | None:
    """The first checkpoint of `candidates` (newest first) that loads; each one that does not is named."""
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
            return path
        except Exception as error:  # a torn zip, a truncated pickle, an unreadable file: all mean "not this one"
            log.warning("hpcsweep: skipping checkpoint %s: it does not load (%s); trying the next newest", path, error)
    return None

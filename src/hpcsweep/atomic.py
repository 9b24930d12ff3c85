"""Write files and folders so that a failure leaves nothing half-written.

Everything is built under a temporary name beside its destination (same file system, so the
final `os.replace` is atomic) and only renamed into place once complete. On an exception the
temporary is removed and the destination keeps whatever it held before. The content is fsynced
before the rename and the folder after it: without that, a power cut or a node crash can leave
the new name pointing at an empty file (the rename reached the disk, the data did not).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(destination: Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `destination` when the block succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        fsync(temporary)
        os.replace(temporary, destination)
        fsync(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces `destination` when the block succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        yield temporary
        for path in [*temporary.rglob("*"), temporary]:
            if not path.is_symlink():
                fsync(path)
        swap_into_place(temporary, destination)
        fsync(destination.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def swap_into_place(temporary: Path, destination: Path) -> None:
    """Replace a folder by another; a folder cannot be os.replace'd over a non-empty one."""
    if not destination.exists():
        os.replace(temporary, destination)
        return
    previous = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    os.replace(destination, previous)
    os.replace(temporary, destination)
    shutil.rmtree(previous, ignore_errors=True)


def fsync(path: Path) -> None:
    """Force a file's content, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno != errno.EINVAL:  # EINVAL: this file system cannot fsync a folder; nothing to force
            raise
    finally:
        os.close(fd)

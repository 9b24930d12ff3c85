"""Write files and folders so that a failure leaves nothing half-written.

Everything is built under a temporary name beside its destination (same file system, so the
final `os.replace` is atomic) and only renamed into place once complete. On an exception the
temporary is removed and the destination keeps whatever it held before. The content is fsynced
before the rename and the folder after it: without that, a power cut or a node crash can leave
the new name pointing at an empty file (the rename reached the disk, the data did not).

A new file or folder gets what open() or mkdir would give it: 0666 or 0777 less the umask (and a
folder's default ACL), so teammates on a shared project folder read what the user lets them read.
`tempfile.mkstemp` and `mkdtemp` would make everything 0600 or 0700 whatever the umask says. A file
holding a secret asks for `PRIVATE`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

FILE_MODE = 0o666  # what open() asks for; the umask takes away what the user keeps to herself
FOLDER_MODE = 0o777
PRIVATE = 0o600  # for a file holding a password or a token
NAME_ATTEMPTS = 100


@contextlib.contextmanager
def atomic_file(destination: Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `destination`, with `mode` less the umask (a new
    file's permissions, even where it replaces one), when the block succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = create_beside(destination, lambda path: create_file(path, mode))
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
    temporary = create_beside(destination, lambda path: path.mkdir(mode=FOLDER_MODE))
    try:
        yield temporary
        for path in [*temporary.rglob("*"), temporary]:
            if not path.is_symlink():
                fsync(path)
        swap_into_place(temporary, destination)
        fsync(destination.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def create_beside(destination: Path, create: Callable[[Path], None]) -> Path:
    """A new temporary `.NAME.RANDOM.tmp` next to `destination`, made by `create`, which must fail
    with FileExistsError where the name is taken (O_EXCL, mkdir): nothing else's file is reused."""
    for _ in range(NAME_ATTEMPTS):
        temporary = destination.with_name(f".{destination.name}.{os.urandom(4).hex()}.tmp")
        try:
            create(temporary)
            return temporary
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"no free temporary name beside it after {NAME_ATTEMPTS} tries", str(destination)
    )


def create_file(path: Path, mode: int) -> None:
    """An empty file where none is (O_EXCL), its mode less the umask, as open() creates one."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


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

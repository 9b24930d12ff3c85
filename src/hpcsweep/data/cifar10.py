"""CIFAR-10 in its official python-pickle archive: download, import, read and validate.

Two ways in, one place out (`raw_dir/cifar-10-python.tar.gz`):
- `download`: the official tarball over HTTP, resumed from a `.part` file after an interrupted
  transfer, md5-checked before it is renamed into place; a bar on a terminal, a line every tenth
  of the way in a log.
- `import_archive`: a local archive for offline clusters (or one rebuilt from another copy of the
  data). Its md5 cannot be the official one, so its whole structure is checked instead.

The reader is our own (not torchvision's) so that imported archives get the same validation, and
its unpickler accepts nothing but the numpy arrays, lists and strings the format holds: a pickle
can run arbitrary code, and an archive from a shared folder is not trusted.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hpcsweep.atomic import atomic_file
from hpcsweep.errors import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
CHUNK = 1 << 20
# an official batch is about 31 MB; a member far larger is not CIFAR-10, and is never read into memory
MAX_MEMBER_BYTES = 64 << 20


@dataclass(frozen=True)
class Split:
    """Images as N x 3 x 32 x 32 uint8 and their labels as N int64."""

    images: np.ndarray
    labels: np.ndarray


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only; any other class is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_archive(path: Path) -> dict[str, Split]:
    """Read and validate every batch of an official-layout archive: {"train": ..., "test": ...}."""
    members = read_members(Path(path))
    per_batch = check_meta(f"{path}: {FOLDER}/{META}", members[META])
    train = [check_batch(path, name, members[name], per_batch) for name in TRAIN_BATCHES]
    test = check_batch(path, TEST_BATCH, members[TEST_BATCH], per_batch)
    return {
        "train": Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
        "test": test,
    }


def check_meta(where: str, meta: dict) -> int:
    """The class names must be CIFAR-10's, in order; returns the images per batch."""
    names = meta.get("label_names")
    if not isinstance(names, list) or tuple(as_text(name) for name in names) != CLASSES:
        raise UserError(f"{where}: label_names={one_line(repr(names))[:200]}; expected {list(CLASSES)}")
    per_batch = meta.get("num_cases_per_batch")
    if type(per_batch) is not int or per_batch < 1:
        raise UserError(f"{where}: num_cases_per_batch={one_line(repr(per_batch))[:80]}; expected a positive integer")
    return per_batch


def read_members(path: Path) -> dict[str, dict]:
    """Unpickle the six batches and the meta file; errors name the archive and what is wrong."""
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is not None and member.isfile():
                    check_member_size(path, member)
                    found[name] = unpickle(path, name, tar.extractfile(member).read())
    except FileNotFoundError:
        raise UserError(f"{path}: archive not found") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(f"{path}: not a readable cifar-10-python.tar.gz ({one_line(str(error))})") from None
    missing = [f"{FOLDER}/{name}" for name in wanted.values() if name not in found]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; expected {', '.join(wanted)}")
    return found


def check_member_size(path: Path, member: tarfile.TarInfo) -> None:
    if member.size > MAX_MEMBER_BYTES:
        raise UserError(
            f"{path}: {member.name} is {member.size} bytes; a CIFAR-10 batch is about 31 MB "
            f"(at most {MAX_MEMBER_BYTES} bytes are read)"
        )


def unpickle(path: Path, name: str, payload: bytes) -> dict:
    try:
        # latin1: the official batches are Python 2 pickles of numpy arrays
        content = ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as error:  # a corrupt pickle can fail in many ways, all the user's data
        raise UserError(f"{path}: {FOLDER}/{name} is not a valid batch pickle ({one_line(str(error))})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: {FOLDER}/{name} holds {type(content).__name__}; expected a dict")
    return {as_text(key): value for key, value in content.items()}


def as_text(value: object) -> object:
    """Python 2 pickles hold names as bytes; undecodable bytes become text that matches no name."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def one_line(text: str) -> str:
    return " ".join(text.split())


def check_batch(path: Path, name: str, batch: dict, expected_count: int) -> Split:
    where = f"{path}: {FOLDER}/{name}"
    data, labels = batch.get("data"), batch.get("labels")
    row = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (expected_count, row):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{where}: data is {dtype} {shape}; expected uint8 ({expected_count}, {row})")
    return Split(data.reshape(expected_count, *IMAGE_SHAPE), check_labels(where, labels, expected_count))


def check_labels(where: str, labels: object, expected_count: int) -> np.ndarray:
    """A list (or 1-d integer array) of class indices, one per image: nothing is rounded or wrapped."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list):
        raise UserError(f"{where}: labels is {type(labels).__name__}; expected a list of integers")
    not_integer = next((label for label in labels if type(label) is not int), None)
    if not_integer is not None:
        shown = one_line(repr(not_integer))[:40]
        raise UserError(f"{where}: label {shown} ({type(not_integer).__name__}) is not an integer class index")
    if len(labels) != expected_count:
        raise UserError(f"{where}: {len(labels)} labels for {expected_count} images")
    low, high = min(labels), max(labels)  # Python ints: a huge label cannot overflow here
    if low < 0 or high >= len(CLASSES):
        raise UserError(f"{where}: labels range {low}..{high}; expected 0..{len(CLASSES) - 1}")
    return np.asarray(labels, dtype=np.int64)


def import_archive(archive: Path, out_dir: Path) -> Path:
    """Validate a local archive completely, then copy it to `out_dir` atomically."""
    splits = read_archive(archive)
    destination = Path(out_dir) / ARCHIVE_NAME
    with atomic_file(destination) as temporary:
        shutil.copyfile(archive, temporary)
    counts = "+".join(str(len(split.labels)) for split in splits.values())
    print(
        f"imported {archive} -> {destination}: structure checked ({counts} images), md5 not checked (a local archive)"
    )
    return destination


def download(out_dir: Path, url: str = URL, md5: str = MD5) -> Path:
    """Fetch the archive, resuming a `.part` left by an interrupted transfer; rename once md5 matches."""
    destination = Path(out_dir) / ARCHIVE_NAME
    if destination.is_file() and file_md5(destination) == md5:
        print(f"{destination} is already there, md5 {md5} checked")
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        fetch_resuming(url, partial)
    except (urllib.error.URLError, OSError) as error:
        raise UserError(
            f"could not download {url} ({error}); {partial} is kept and resumed next time; "
            f"offline? set data.archive to a local {ARCHIVE_NAME}"
        ) from None
    actual = file_md5(partial)
    if actual != md5:
        partial.unlink()
        raise UserError(f"{url}: md5 {actual} does not match the expected {md5}; the download was deleted")
    partial.replace(destination)
    print(f"downloaded {url} -> {destination}, md5 {md5} checked")
    return destination


def fetch_resuming(url: str, partial: Path) -> None:
    """Append to `partial` from where it stops; start over if the server ignores the range."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the part is already complete
            raise
        return
    with response:
        resumed = response.status == 206
        expected = int(response.headers.get("Content-Length", -1))
        already = offset if resumed else 0
        total = already + expected if expected >= 0 else None
        received = 0
        with (
            open(partial, "ab" if resumed else "wb") as out,
            download_progress(partial.stem, total, already) as progress,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if 0 <= received < expected:
        raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def download_progress(name: str, total: int | None, already: int):
    """A context whose `update(bytes)` shows the transfer: tqdm's bar where stderr is a terminal,
    else TenthLines (a bar's carriage returns would fill a job log)."""
    if sys.stderr.isatty():
        return tqdm(desc=name, total=total, initial=already, unit="B", unit_scale=True)
    return TenthLines(name, total, already)


class TenthLines:
    """`downloading NAME: 40% (68.2 of 170.5 MB)` each time another tenth of `total` bytes has
    arrived; nothing when the size is unknown (the closing `downloaded ...` line says it ended)."""

    def __init__(self, name: str, total: int | None, already: int) -> None:
        self.name, self.total, self.done = name, total, already
        self.tenths_shown = self.tenths()

    def tenths(self) -> int:
        return 10 * self.done // self.total if self.total else 0

    def update(self, count: int) -> None:
        self.done += count
        if self.tenths() > self.tenths_shown:
            self.tenths_shown = self.tenths()
            megabytes = f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB"
            print(f"downloading {self.name}: {100 * self.done // self.total}% ({megabytes})", flush=True)

    def __enter__(self) -> TenthLines:
        return self

    def __exit__(self, *exception) -> None:
        """Nothing to close: a line is whole once printed."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

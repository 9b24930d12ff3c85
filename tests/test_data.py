"""Getting CIFAR-10 in: import, download (md5, resume), prepare, and corrupt inputs refused cleanly."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.synthetic import BATCHES, CLASSES, VAL_SIZE, batch, write_archive
from hpcsweep.data.cifar10 import ARCHIVE_NAME, MAX_MEMBER_BYTES, download, import_archive, read_archive
from hpcsweep.data.prepare import prepare
from hpcsweep.errors import UserError


def test_import_validates_and_copies_byte_for_byte(synthetic_archive, tmp_path, capsys):
    copied = import_archive(synthetic_archive, tmp_path / "raw")
    assert copied == tmp_path / "raw" / ARCHIVE_NAME
    assert copied.read_bytes() == synthetic_archive.read_bytes()
    assert "structure checked (300+60 images), md5 not checked" in capsys.readouterr().out


def test_reader_returns_official_shapes_and_labels(synthetic_archive):
    splits = read_archive(synthetic_archive)
    assert splits["train"].images.shape == (300, 3, 32, 32) and splits["train"].images.dtype == np.uint8
    assert splits["test"].images.shape == (60, 3, 32, 32)
    assert splits["train"].labels.dtype == np.int64 and set(splits["train"].labels) <= set(range(10))


def test_prepare_writes_tensors_and_train_split_stats(synthetic_archive, tmp_path):
    raw = import_archive(synthetic_archive, tmp_path / "raw").parent
    stats = prepare(raw, tmp_path / "prepared", VAL_SIZE)
    train = torch.load(tmp_path / "prepared/train.pt", weights_only=True)
    val = torch.load(tmp_path / "prepared/val.pt", weights_only=True)
    test = torch.load(tmp_path / "prepared/test.pt", weights_only=True)
    assert train["images"].dtype == torch.uint8 and train["images"].shape == (300 - VAL_SIZE, 3, 32, 32)
    assert val["labels"].shape == (VAL_SIZE,) and test["labels"].shape == (60,)
    expected = train["images"].double().div(255)  # the remaining training images only
    assert stats["mean"] == pytest.approx(expected.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert stats["std"] == pytest.approx(expected.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-5)
    on_disk = json.loads((tmp_path / "prepared/stats.json").read_text())
    assert on_disk["images"] == {"train": 300 - VAL_SIZE, "val": VAL_SIZE, "test": 60} and len(on_disk["classes"]) == 10
    assert on_disk["validation"]["size"] == VAL_SIZE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def corrupt_archives(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Each broken input and the words its error must contain."""
    folder.mkdir(parents=True)
    truncated = folder / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_archive = folder / "notes.tar.gz"
    not_archive.write_text("this is not an archive\n")
    empty = folder / "empty.tar.gz"
    empty.touch()
    not_tar = folder / "plain.gz"
    not_tar.write_bytes(gzip.compress(b"gzip but no tar inside" * 100))
    return {
        "truncated gzip": (truncated, "not a readable cifar-10-python.tar.gz"),
        "missing batch": (
            write_archive(folder / "missing.tar.gz", drop="data_batch_3"),
            "missing cifar-10-batches-py/data_batch_3",
        ),
        "missing meta": (
            write_archive(folder / "nometa.tar.gz", drop="batches.meta"),
            "missing cifar-10-batches-py/batches.meta",
        ),
        "wrong shape": (
            write_archive(folder / "shape.tar.gz", bad_shape="data_batch_2"),
            "data_batch_2: data is uint8 (60, 1024); expected uint8 (60, 3072)",
        ),
        "label out of range": (
            write_archive(folder / "label.tar.gz", bad_label="test_batch"),
            "test_batch: labels range 0..10; expected 0..9",
        ),
        "not an archive": (not_archive, "not a readable cifar-10-python.tar.gz"),
        "empty file": (empty, "not a readable cifar-10-python.tar.gz"),
        "gzip without tar": (not_tar, "not a readable cifar-10-python.tar.gz"),
    }


def test_every_corrupt_input_is_one_clear_line_and_nothing_is_written(tmp_path, synthetic_archive):
    cases = corrupt_archives(tmp_path / "inputs", synthetic_archive)
    for case, (archive, words) in cases.items():
        out = tmp_path / "out" / case.replace(" ", "_")
        with pytest.raises(UserError) as error:
            import_archive(archive, out / "raw")
        assert words in str(error.value), case
        assert str(archive) in str(error.value) and "\n" not in str(error.value), case
        assert not (out / "raw").exists(), case


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    import io
    import pickle
    import tarfile

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = pickle.dumps({"data": Exploit()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match="data_batch_1 is not a valid batch pickle .*refusing to load .*print"):
        read_archive(archive)


def test_failed_prepare_keeps_the_previous_output(tmp_path, synthetic_archive):
    raw = import_archive(synthetic_archive, tmp_path / "raw").parent
    prepare(raw, tmp_path / "prepared", VAL_SIZE)
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()}
    (raw / ARCHIVE_NAME).write_bytes(synthetic_archive.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable"):
        prepare(raw, tmp_path / "prepared", VAL_SIZE)
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def test_prepare_without_archive_says_to_download_first(tmp_path):
    with pytest.raises(UserError, match="not found; run `hpcsweep download` first"):
        prepare(tmp_path / "raw", tmp_path / "prepared", VAL_SIZE)
    assert not (tmp_path / "prepared").exists()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support, and can cut a response short to simulate a dropped link."""

    cut_after: int | None = None

    def do_GET(self):
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:] if self.cut_after is None else body[start : start + self.cut_after]
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(synthetic_archive):
    handler = lambda *a, **k: RangeHandler(*a, directory=str(synthetic_archive.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{synthetic_archive.name}"
    server.shutdown()


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_resumes_after_a_dropped_connection(http_server, synthetic_archive, tmp_path):
    RangeHandler.cut_after = 10_000
    try:
        with pytest.raises(UserError, match="is kept and resumed next time"):
            download(tmp_path, url=http_server, md5=md5_of(synthetic_archive))
    finally:
        RangeHandler.cut_after = None
    partial = tmp_path / (ARCHIVE_NAME + ".part")
    assert partial.stat().st_size == 10_000 and not (tmp_path / ARCHIVE_NAME).exists()
    result = download(tmp_path, url=http_server, md5=md5_of(synthetic_archive))
    assert result.read_bytes() == synthetic_archive.read_bytes()
    assert not partial.exists()


def test_download_with_wrong_md5_leaves_nothing(http_server, tmp_path):
    with pytest.raises(UserError, match="does not match the expected 0{32}; the download was deleted"):
        download(tmp_path, url=http_server, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_says_what_to_do_offline(tmp_path):
    with pytest.raises(UserError, match="offline\\? set data.archive to a local cifar-10-python.tar.gz"):
        download(tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5="0" * 32)
    assert not (tmp_path / ARCHIVE_NAME).exists()


def write_members(path: Path, members: dict[str, object], big: dict[str, int] | None = None) -> Path:
    """An archive in the official layout holding these pickled members (and `big`: name -> size of zeros)."""
    import io
    import pickle
    import tarfile

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        payloads = {name: pickle.dumps(content, protocol=2) for name, content in members.items()}
        payloads |= {name: bytes(size) for name, size in (big or {}).items()}
        for name, payload in payloads.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def official_members(per_batch: int = 4) -> dict[str, dict]:
    """The synthetic archive's members as Python objects, to break one of them."""
    rng = np.random.default_rng(0)
    members = {name: batch(per_batch, rng, name, bad_shape=False, bad_label=False) for name in BATCHES}
    members["batches.meta"] = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES]}
    return members


def with_labels(labels: object) -> dict[str, dict]:
    members = official_members()
    members["data_batch_2"][b"labels"] = labels
    return members


def with_meta(key: bytes, value: object) -> dict[str, dict]:
    members = official_members()
    members["batches.meta"][key] = value
    return members


MALFORMED = {
    "string labels": (with_labels(["cat", "dog", "cat", "dog"]), "data_batch_2: label 'cat' (str) is not an integer"),
    "float labels": (with_labels([1.0, 2.5, 3.0, 4.0]), "data_batch_2: label 1.0 (float) is not an integer"),
    "huge labels": (with_labels([1, 2, 3, 2**70]), f"data_batch_2: labels range 1..{2**70}; expected 0..9"),
    "labels not a list": (with_labels(7), "data_batch_2: labels is int; expected a list of integers"),
    "label_names a number": (with_meta(b"label_names", 7), "batches.meta: label_names=7; expected ['airplane'"),
    "label_names undecodable": (
        with_meta(b"label_names", [b"\xff"] * 10),
        "batches.meta: label_names=[b'\\xff'",
    ),
    "count as text": (with_meta(b"num_cases_per_batch", "4"), "batches.meta: num_cases_per_batch='4'; expected a"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_contents_that_pass_the_pickle_allow_list_are_one_line_naming_the_member(tmp_path, case):
    members, words = MALFORMED[case]
    archive = write_members(tmp_path / "malformed.tar.gz", members)
    with pytest.raises(UserError) as error:
        import_archive(archive, tmp_path / "raw")
    message = str(error.value)
    assert message.startswith(f"{archive}: cifar-10-batches-py/") and words in message and "\n" not in message
    assert not (tmp_path / "raw").exists()


def test_a_member_larger_than_any_cifar_batch_is_refused_before_it_is_read(tmp_path):
    members = official_members()
    del members["data_batch_1"]
    archive = write_members(tmp_path / "bomb.tar.gz", members, big={"data_batch_1": MAX_MEMBER_BYTES + 1})
    assert archive.stat().st_size < MAX_MEMBER_BYTES // 100  # zeros: a small archive, a huge member
    with pytest.raises(UserError) as error:
        read_archive(archive)
    assert str(error.value) == (
        f"{archive}: cifar-10-batches-py/data_batch_1 is {MAX_MEMBER_BYTES + 1} bytes; a CIFAR-10 batch is about "
        f"31 MB (at most {MAX_MEMBER_BYTES} bytes are read)"
    )

"""The spool under faults caused for real: a torn line, a full disk, a corrupt sent count, a
proxy or server that refuses, credentials that must never show, a server at a new address.

Servers here are real HTTP servers on loopback: a small one (`FakeServer`) answers the way MLflow
or a proxy in front of it does, so that each refusal can be chosen; nothing is mocked except the
one fault no test can cause (a power cut: atomic writes are checked to fsync).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import resource
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers.runs import environment, hpcsweep
from hpcsweep.atomic import atomic_file
from hpcsweep.tracking.sender import Flusher, ServerAway, send_unsent
from hpcsweep.tracking.spool import SPOOL_FILE, Spool
from hpcsweep.tracking.sync import sync_spools

SECRET = "s3cret-pw"
LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"


def batch(step: int, run_id: str = "run") -> dict:
    return {"run_id": run_id, "metrics": [["loss", 1.0 / (step + 1), 1000 + step, step]], "params": [], "tags": []}


def steps(records: list[dict]) -> list[int]:
    return [record["metrics"][0][3] for record in records]


class FakeServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on loopback that answers like MLflow: `refusals[path prefix]` is a list
    of (status, body) answered in turn before it accepts; every accepted request is kept."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.refusals: dict[str, list[tuple[int, str]]] = {}
        self.accepted: list[tuple[str, bytes]] = []
        self.uri = f"http://127.0.0.1:{self.server_address[1]}"


class FakeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200, "OK")

    def do_POST(self):
        self.take()

    def do_PUT(self):
        self.take()

    def take(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        for prefix, answers in self.server.refusals.items():
            if self.path.startswith(prefix) and answers:
                return self.answer(*answers.pop(0))
        self.server.accepted.append((self.path, body))
        self.answer(200, "{}")

    def answer(self, status: int, body: str):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


def sent_steps(server: FakeServer) -> list[int]:
    return [m["step"] for path, body in server.accepted if path == LOG_BATCH for m in json.loads(body)["metrics"]]


def spool_with(folder: Path, uri: str, count: int) -> Spool:
    spool = Spool(folder)
    spool.claim(uri)
    for step in range(count):
        spool.append(batch(step))
    return spool


def test_a_torn_line_is_cut_off_so_the_next_append_starts_a_line_of_its_own(tmp_path):
    spool_with(tmp_path, "http://server:5000", 2).release()
    with (tmp_path / SPOOL_FILE).open("a") as stream:
        stream.write('{"run_id": "run", "metr')  # killed in the middle of a write

    resumed = Spool(tmp_path)
    resumed.claim("http://server:5000")
    resumed.append(batch(2))
    resumed.release()

    again = Spool(tmp_path)
    again.claim("http://server:5000")
    assert steps(again.unsent()) == [0, 1, 2]


def small_disk() -> None:
    """In the child: any file write past 1500 bytes fails (EFBIG; Python ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))


def test_a_full_disk_leaves_no_half_line_behind(tmp_path):
    """RLIMIT_FSIZE stops the writes of a child process mid-line, as a full disk would."""
    script = (
        "import sys\nfrom hpcsweep.tracking.spool import Spool\n"
        f"spool = Spool({str(tmp_path)!r}); spool.claim('http://server:5000')\n"
        "for step in range(1000):\n"
        "    try:\n"
        f"        spool.append({batch(0)!r} | {{'metrics': [['loss', 0.5, 1000, step]]}})\n"
        "    except OSError as error:\n"
        "        sys.exit(f'{step} {error.strerror}')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], preexec_fn=small_disk, capture_output=True, text=True)
    written, reason = done.stderr.strip().splitlines()[-1].split(" ", 1)
    assert done.returncode == 1 and "too large" in reason, done.stderr

    resumed = Spool(tmp_path)
    resumed.claim("http://server:5000")
    assert steps(resumed.unsent()) == list(range(int(written)))
    resumed.append(batch(int(written)))
    resumed.release()
    again = Spool(tmp_path)
    again.claim("http://server:5000")
    assert steps(again.unsent()) == list(range(int(written) + 1))


def test_a_line_an_older_version_wrote_onto_a_torn_one_is_salvaged(tmp_path, caplog):
    spool_with(tmp_path, "http://server:5000", 1).release()
    with (tmp_path / SPOOL_FILE).open("a") as stream:
        stream.write('{"run_id": "run", "metr' + json.dumps(batch(1)) + "\n" + json.dumps(batch(2)) + "\n")

    again = Spool(tmp_path)
    again.claim("http://server:5000")
    assert steps(again.unsent()) == [0, 1, 2]
    assert f"{tmp_path / SPOOL_FILE}:3: a line cut short" in caplog.text


@pytest.mark.parametrize("sent", ["", "garbage", "-1", "7"])
def test_a_corrupt_or_impossible_sent_count_sends_everything_again(tmp_path, caplog, sent):
    spool_with(tmp_path, "http://server:5000", 3).release()
    (tmp_path / "mlflow-spool.sent").write_text(sent)

    again = Spool(tmp_path)
    again.claim("http://server:5000")
    assert steps(again.unsent()) == [0, 1, 2]
    (line,) = [record.getMessage() for record in caplog.records if "mlflow-spool.sent" in record.getMessage()]
    assert "sending all 3 records again" in line


def test_an_atomic_file_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    """The one fault no test causes for real is a power cut: check the fsyncs it needs instead."""
    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "state.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_file(tmp_path / "state.json") as temporary:
        temporary.write_text("{}")
    (file_path, renamed_then), (folder_path, renamed_after) = synced
    assert Path(file_path).name.startswith(".state.json.") and not renamed_then
    assert folder_path == str(tmp_path) and renamed_after


def test_an_upload_a_proxy_refuses_as_too_large_is_set_aside_and_live_logging_goes_on(tmp_path, server, caplog):
    spool = spool_with(tmp_path, server.uri, 1)
    kept = tmp_path / "mlflow-spool-artifacts" / "a1" / "model.ckpt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"weights")
    spool.append({"artifact": str(kept), "artifact_path": None, "artifact_uri": "mlflow-artifacts:/0/run/artifacts"})
    spool.append(batch(1))
    server.refusals[ARTIFACTS] = [(413, "<html>413 Request Entity Too Large</html>")]

    flusher = Flusher(spool)
    flusher.start()
    flusher.notify()
    assert flusher.close(timeout_s=30) == 0
    assert sent_steps(server) == [0, 1]
    (rejected,) = [json.loads(line) for line in (tmp_path / "mlflow-spool.rejected").read_text().splitlines()]
    assert rejected["record"]["artifact"] == str(kept) and "413" in rejected["reason"] and kept.is_file()


def test_a_record_that_cannot_be_turned_into_a_request_is_set_aside(tmp_path, server):
    spool = spool_with(tmp_path, server.uri, 1)
    spool.append({"run_id": "run", "metrics": [["loss", 1.0]], "params": [], "tags": []})
    spool.append(batch(2))
    send_unsent(spool)
    assert sent_steps(server) == [0, 2]
    assert "malformed" in (tmp_path / "mlflow-spool.rejected").read_text()


def test_the_sender_survives_a_sent_count_it_cannot_write_and_says_so_once(tmp_path, server, caplog):
    spool = spool_with(tmp_path, server.uri, 3)
    sent_file = tmp_path / "mlflow-spool.sent"
    sent_file.mkdir()  # os.replace onto it fails: an OSError the sender did not expect
    flusher = Flusher(spool)
    flusher.start()
    flusher.notify()
    flusher.join(timeout=2)
    assert flusher.is_alive() and len(spool.unsent()) == 3
    sent_file.rmdir()
    assert flusher.close(timeout_s=30) == 0
    assert sent_file.read_text() == "3" and set(sent_steps(server)) == {0, 1, 2}  # sent again: the server dedups
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "IsADirectoryError" in errors[0].getMessage()


def test_a_transient_database_error_is_retried_not_set_aside(tmp_path, server):
    """MLflow answers 400 BAD_REQUEST for database errors it does not know as operational (a
    connection pool timeout): the record is fine, the server is not."""
    spool = spool_with(tmp_path, server.uri, 1)
    server.refusals[LOG_BATCH] = [(400, '{"error_code": "BAD_REQUEST", "message": "QueuePool limit reached"}')]
    with pytest.raises(ServerAway):
        send_unsent(spool)
    send_unsent(spool)
    assert sent_steps(server) == [0] and not (tmp_path / "mlflow-spool.rejected").exists()


def test_refused_credentials_are_said_as_such_and_never_shown_or_stored(tmp_path, server, caplog):
    uri = server.uri.replace("http://", f"http://alice:{SECRET}@")
    spool_with(tmp_path, uri, 2).release()
    server.refusals[LOG_BATCH] = [(401, "You are not authenticated.")] * 2

    (outcome,) = sync_spools(tmp_path, uri)
    assert "credentials" in outcome.line() and "refused" in outcome.line() and "unreachable" not in outcome.line()
    assert outcome.left == 2
    spool_file = tmp_path / SPOOL_FILE
    assert SECRET not in spool_file.read_text() and SECRET not in outcome.line() and SECRET not in caplog.text
    assert stat.S_IMODE(spool_file.stat().st_mode) == 0o600


def test_error_texts_from_mlflow_are_redacted(tmp_path):
    dead = "http://alice:" + SECRET + "@127.0.0.1:9"  # the discard port: nothing listens
    spool_with(tmp_path, dead, 1).release()
    (outcome,) = sync_spools(tmp_path, dead)
    assert "unreachable" in outcome.line() and "127.0.0.1:9" in outcome.line() and SECRET not in outcome.line()


def test_the_configured_uri_wins_over_the_spools_header_and_the_change_is_logged(tmp_path, server, caplog):
    spool_with(tmp_path, "http://old-node:5000", 2).release()
    resumed = Spool(tmp_path)
    resumed.claim(server.uri)
    assert resumed.uri == server.uri
    assert f"written for http://old-node:5000; sending to {server.uri}" in caplog.text
    send_unsent(resumed)
    assert sent_steps(server) == [0, 1]
    assert json.loads((tmp_path / SPOOL_FILE).read_text().splitlines()[0]) == {"uri": server.uri}


def test_sync_goes_on_past_a_bad_spool_names_it_and_sends_to_the_configured_server(project, server):
    checkpoints = project / "checkpoints"
    (checkpoints / "bad").mkdir(parents=True)
    (checkpoints / "bad" / SPOOL_FILE).write_text("not json\n")
    spool_with(checkpoints / "good", server.uri, 2).release()
    spool_with(checkpoints / "moved", "http://127.0.0.1:9", 1).release()  # the server's old address
    unconfigured = {key: value for key, value in environment(server.uri).items() if key != "MLFLOW_TRACKING_URI"}

    done = hpcsweep(["sync", str(checkpoints)], project, server.uri, env=unconfigured, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{checkpoints / 'bad'}: cannot be sent: " in done.stdout and "not a spool" in done.stdout
    assert f"{checkpoints / 'good'}: sent 2 records" in done.stdout and sent_steps(server) == [0, 1]
    assert f"{checkpoints / 'moved'}: sent 0 records, 1 left: http://127.0.0.1:9 is unreachable" in done.stdout
    assert str(checkpoints / "bad") in done.stderr and str(checkpoints / "moved") in done.stderr

    configured = hpcsweep(["sync", str(checkpoints)], project, server.uri, timeout=120)
    assert configured.returncode == 0, configured.stderr
    assert f"{checkpoints / 'moved'}: sent 1 records" in configured.stdout and sent_steps(server) == [0, 1, 0]
    assert "written for http://127.0.0.1:9; sending to " + server.uri in configured.stderr

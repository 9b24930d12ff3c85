"""`hpcsweep` ends without Python's teardown of its modules, and loses nothing by it (process_exit.py).

A module-level object whose `__del__` writes a line shows whether the teardown ran; the threads,
atexit handlers, logging and buffered output a command leaves behind show that all else still ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TEARDOWN_WITNESS = """
import os

class Teardown:
    def __del__(self):
        os.write(1, b"teardown ran\\n")

keep = Teardown()  # freed only by the interpreter's teardown
"""

COMMAND = """
import atexit, logging, sys, threading, time
from hpcsweep.process_exit import run

def command():
    logging.getLogger().addHandler(logging.FileHandler(sys.argv[1], delay=True))
    logging.getLogger().warning("logged")
    atexit.register(print, "atexit ran")
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    sys.stdout.write("unflushed ")
    outcome = sys.argv[2]
    if outcome == "interrupt":
        raise KeyboardInterrupt
    if outcome == "bug":
        raise RuntimeError("a bug")
    sys.exit(int(outcome) if outcome.isdigit() else outcome)

run(command)
"""


def ended(tmp_path: Path, outcome: str) -> subprocess.CompletedProcess:
    (tmp_path / "command.py").write_text(TEARDOWN_WITNESS + COMMAND)
    return subprocess.run(
        [sys.executable, str(tmp_path / "command.py"), str(tmp_path / "log"), outcome], capture_output=True, text=True
    )


@pytest.mark.parametrize(("outcome", "status"), [("0", 0), ("3", 3), ("a message", 1), ("bug", 1)])
def test_a_command_ends_with_its_status_after_threads_atexit_and_logging_without_teardown(tmp_path, outcome, status):
    done = ended(tmp_path, outcome)
    assert done.returncode == status, done.stderr
    assert done.stdout == "unflushed thread done\natexit ran\n"  # and no "teardown ran"
    assert (tmp_path / "log").read_text() == "logged\n"
    if outcome == "a message":
        assert done.stderr.endswith("a message\n")
    if outcome == "bug":
        assert "RuntimeError: a bug" in done.stderr


def test_ctrl_c_keeps_pythons_own_ending_by_sigint(tmp_path):
    done = ended(tmp_path, "interrupt")
    assert done.returncode == -signal.SIGINT
    assert done.stdout.endswith("teardown ran\n") and "KeyboardInterrupt" in done.stderr


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_both_ways_of_starting_hpcsweep_end_without_teardown(tmp_path, entry):
    (tmp_path / "sitecustomize.py").write_text(TEARDOWN_WITNESS)  # imported by every Python started here
    script = shutil.which("hpcsweep", path=str(Path(sys.executable).parent))
    command = [script] if entry == "console script" else [sys.executable, "-m", "hpcsweep"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "hpcsweep, version" in done.stdout and "teardown ran" not in done.stdout, done.stdout

"""SIGKILL at a chosen moment inside a real training process: while it writes a checkpoint or its spool.

A timer in the test cannot aim at a write that lasts a millisecond, so the training process is
started with a `sitecustomize` that watches Python's `open` audit events (`open()` and
`os.open`) and, at the n-th opening for writing of a path containing a given fragment, has the kernel kill the process
`delay_ms` later. The kill is a real SIGKILL at a real moment; nothing in the code under test is
replaced.
"""

from __future__ import annotations

from pathlib import Path

KILL_AT = "HPCSWEEP_TEST_KILL_AT"  # "FRAGMENT|N|DELAY_MS"

SITECUSTOMIZE = f'''
import os, signal, sys, threading

_rule = os.environ.get("{KILL_AT}")
if _rule:
    _fragment, _nth, _delay_ms = _rule.split("|")
    _seen = [0]

    def _writes(mode, flags):  # open(path, "a") gives a mode; os.open(path, flags) gives flags
        if isinstance(mode, str):
            return any(flag in mode for flag in "wax+")
        return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR))

    def _kill_on_open(event, args):
        if event != "open" or len(args) < 3:
            return
        if _fragment in str(args[0]) and _writes(args[1], args[2]):
            _seen[0] += 1
            if _seen[0] == int(_nth):
                threading.Timer(float(_delay_ms) / 1000, os.kill, (os.getpid(), signal.SIGKILL)).start()

    sys.addaudithook(_kill_on_open)
'''


def kill_hook(folder: Path) -> Path:
    """A folder holding the killing `sitecustomize.py`: put it first on the training's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def kill_at(fragment: str, nth: int, delay_ms: float) -> dict[str, str]:
    """The environment that kills the process `delay_ms` after its `nth` write-opening of a `fragment` path."""
    return {KILL_AT: f"{fragment}|{nth}|{delay_ms:.2f}"}

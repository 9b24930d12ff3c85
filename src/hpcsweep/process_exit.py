"""The `hpcsweep` process ends without Python's teardown of its modules.

After a training, the interpreter would spend 2-5 s of CPU freeing torch's, Lightning's and
MLflow's modules object by object before the process ends (measured on the 2-core development
machine: importing the training alone and exiting takes 11.8-14.8 s, 9.4-9.7 s without the
teardown): a fifth of a short training's CPU, paid again by every grid task. None of it is needed.
By the time it would start, the interpreter has waited for the threads that are not daemons and
run the atexit handlers: MLflow ends its active run and flushes its asynchronous logging, logging
flushes its handlers, multiprocessing reaps its children, weakref finalizers remove temporary
folders. hpcsweep's own files are closed or written atomically before then (they survive SIGKILL
at any moment: docs/reliability.md). `run` registers its handler before any of those, so it runs
after them all (atexit calls handlers last registered first); it flushes stdout and stderr and
ends the process with the command's exit status.

Ctrl-C keeps Python's own ending: an uncaught KeyboardInterrupt ends the process by SIGINT, which
the local executor and shells read as "interrupted".
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable


def run(command: Callable[[], object]) -> None:
    """Call `command` (the click group) as the process's whole work, and end without teardown."""
    status: list[int] = []
    atexit.register(end_process, status)
    try:
        command()
    except SystemExit as exit:
        status.append(exit_status(exit.code))
        raise
    except KeyboardInterrupt:
        raise
    except BaseException:  # a bug: Python prints its traceback before the atexit handlers run
        status.append(1)
        raise
    status.append(0)


def exit_status(code: object) -> int:
    """The process's exit status for sys.exit(code): None is 0, a message (printed by Python) is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def end_process(status: list[int]) -> None:
    if not status:  # interrupted: Python's own ending
        return
    logging.shutdown()  # registered before this handler where logging came first: it would run after
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(status[0])

"""Ctrl-C that waits for the end of the current step.

A long loop checks ``interrupted()`` between steps, saves a consistent checkpoint, then stops; an
interrupt in the middle of an optimizer step would otherwise leave state that cannot be resumed
exactly. A second Ctrl-C stops at once.

Under ``torchrun`` a terminal's Ctrl-C reaches each worker twice: from the terminal, and again
from torchrun, which passes the signal on to its workers. A second SIGINT within
``FORWARDED_WITHIN_S`` of the first is taken for that copy, not for a second Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


FORWARDED_WITHIN_S = 2.0


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    from .distributed import from_environment

    grace = FORWARDED_WITHIN_S if from_environment().active else 0.0
    flag = {"set": False, "at": 0.0}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["set"] and time.monotonic() - flag["at"] >= grace:
            raise KeyboardInterrupt
        if not flag["set"]:
            flag["set"], flag["at"] = True, time.monotonic()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)

"""Ctrl-C that waits for the end of the current step.

A long loop checks ``interrupted()`` between steps, saves a consistent checkpoint, then stops; an
interrupt in the middle of an optimizer step would otherwise leave state that cannot be resumed
exactly. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)

"""Progress reporting for long loops, shared by the library and the CLI.

The library reports through a ``Progress`` object so it never prints on its own: the CLI passes a
rich one, scripts and tests pass ``Progress(quiet=True)`` (the default) and see nothing. Under
``torchrun`` only rank 0 shows anything: the other ranks' progress is always quiet.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Task:
    """One running loop: call ``advance`` once per step, with live fields such as ``loss=0.12``."""

    def __init__(self, progress: RichProgress | None, task_id: int | None):
        self._progress = progress
        self._task_id = task_id

    def advance(self, steps: int = 1, **fields: float | str) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task_id, advance=steps, info=info)


class Progress:
    """Rich progress bars with time left, or nothing at all when quiet."""

    def __init__(self, quiet: bool = True, console: Console | None = None):
        from .distributed import is_main

        self.quiet = quiet or not is_main()
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Task]:
        if self.quiet:
            yield Task(None, None)
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with RichProgress(*columns, console=self.console, transient=False) as bar:
            yield Task(bar, bar.add_task(description, total=total, info=""))

    @contextmanager
    def steps(self, description: str) -> Iterator[Callable[..., None]]:
        """A callback ``(done, total, **fields)`` for code that knows nothing of rich.

        The ``synthesizers`` package reports its steps this way; the bar opens at the first call,
        when the total is known, and closes with the block (no bar when no step was reported).
        """
        with ExitStack() as stack:
            state: dict = {"task": None, "done": 0}

            def on_step(done: int, total: int, **fields: float | str) -> None:
                if state["task"] is None:
                    state["task"] = stack.enter_context(self.task(description, total))
                state["task"].advance(done - state["done"], **fields)
                state["done"] = done

            yield on_step

    def log(self, message: str) -> None:
        """A one-line status message (phase start, warnings) shown unless quiet."""
        if not self.quiet:
            self.console.print(message)


def _fmt(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def is_interactive() -> bool:
    return sys.stderr.isatty()

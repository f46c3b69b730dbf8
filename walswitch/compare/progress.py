"""The progress display of ``walswitch compare`` and ``soak``: which scenario, which system, which step.

On a terminal a ``rich`` status line is updated in place; otherwise (a pipe,
a file, a test) each change is one plain line, so logs stay readable; with
``steps=False`` only the beginning and end of each run are lines (a long
soak under ``make bench``).  Both go to the given console (stderr when stdout
carries JSON).
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.status import Status


class Display:
    def __init__(self, console: Console, steps: bool = True) -> None:
        self.console = console
        self.steps = steps
        self.live = console.is_terminal
        self.status: Status | None = None
        self.where = ""
        self.t0 = time.monotonic()

    def __enter__(self) -> "Display":
        if self.live:
            self.status = self.console.status("starting")
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def begin(self, where: str) -> None:
        """A new scenario/system/run."""
        self.where = where
        self.t0 = time.monotonic()
        self._show(f"{where}: setting up", keep=True)

    def step(self, index: int, total: int, text: str) -> None:
        self._show(f"{self.where}: step {index}/{total} {text}")

    def note(self, text: str) -> None:
        self._show(f"{self.where}:   {text}")

    def done(self, text: str) -> None:
        self._show(f"{self.where}: {text}", keep=True)

    def _show(self, text: str, keep: bool = False) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f} s]"
        if self.status is None and not keep and not self.steps:
            return
        if self.status is not None:
            self.status.update(f"{stamp} {text}")
            if keep:
                self.console.log(text)
        else:
            self.console.print(f"{stamp} {text}", highlight=False, markup=False, soft_wrap=True)

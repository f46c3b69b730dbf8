"""What a statement's generator yields to the backend loop, and the failure that ends the backend.

A Query or Execute runs as a generator (backend/sql.py ``Session.run``); it yields a ``Wait`` whenever it
must not go on before something happens elsewhere: ``CommitWait`` until its commit record is flushed and
applied (group commit, backend/backend.py), ``Until`` until a condition holds or a deadline passes
(pg_sleep, pg_promote; a long statement's pause with a past deadline, to let the loop serve the others).
``Terminate`` ends the session that runs (its own pg_terminate_backend).  ``Panic`` is a WAL or store
failure: the backend exits and crash recovery repairs.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Panic(Exception):
    """WAL or store failure: the backend must exit so that crash recovery repairs it."""


class Terminate(Exception):
    """pg_terminate_backend of the running session itself: FATAL 57P01 and the connection closes."""


class Wait:
    """Something a session waits for; the backend resumes the generator after it."""


@dataclass
class CommitWait(Wait):
    """A logged commit: resume once its WAL is flushed and its changes applied."""
    txn: Any    # backend/sql.py Txn
    end_lsn: int


@dataclass
class Until(Wait):
    """Resume once ``pred()`` is true or the monotonic ``deadline`` passed."""
    pred: Callable[[], bool]
    deadline: float


class ThreadJob:
    """``fn()`` in a daemon thread, for work whose C code releases the GIL (PBKDF2, pglast's parser):
    ``done`` is set and ``wake()`` called (the backend's self-pipe) once ``result`` or ``error`` is
    ready.  ``fn`` must touch no state the loop uses."""

    def __init__(self, fn: Callable[[], Any], wake: Callable[[], None], name: str = "job"):
        self.fn: Callable[[], Any] | None = fn
        self.wake = wake
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        try:
            assert self.fn is not None
            self.result = self.fn()
        except Exception as e:  # noqa: BLE001 - handed to the waiter
            self.error = e
        finally:
            self.fn = None
            self.done.set()
            with contextlib.suppress(Exception):
                self.wake()

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result



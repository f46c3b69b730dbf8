"""``DIR/log/events.jsonl``: one JSON object per event, appended by the process that saw it.

Events must survive SIGKILL of the process that wrote them, so each is a
single ``os.write`` of one short line to a file opened ``O_APPEND`` (never the
logging queue, which loses what a killed child had not yet sent).  Every event
carries ``ts`` (wall clock), ``mono`` (monotonic), ``pid``, ``role`` and
``kind``; the rest depends on the kind (see the README's event table).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Per-process event writer; re-open after fork with ``for_child``."""

    def __init__(self, datadir: str, role: str):
        self.datadir = datadir
        self.role = role
        logdir = os.path.join(datadir, "log")
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, EVENTS_FILE)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def emit(self, kind: str, **fields: Any) -> None:
        rec = {"ts": round(time.time(), 6), "mono": round(time.monotonic(), 6),
               "pid": os.getpid(), "role": self.role, "kind": kind}
        rec.update(fields)
        line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
        try:
            os.write(self.fd, line)
        except OSError:
            pass  # events are best effort; never take a process down

    def for_child(self, role: str) -> "EventLog":
        """A writer for a freshly forked child (own fd, own role)."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        return EventLog(self.datadir, role)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def read_events(datadir: str) -> list[dict[str, Any]]:
    """All events so far (a torn last line, from a kill mid-write, is skipped)."""
    path = os.path.join(datadir, "log", EVENTS_FILE)
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out

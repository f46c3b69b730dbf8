"""The ways out of the walreceiver: exceptions that end a session, a round or the process.

Shared by walreceiver/walreceiver.py (streaming) and walreceiver/restorer.py (restore_command under
``walreceiver_restores``); ``WalReceiver.run`` turns each into PostgreSQL's log line and exit code.
"""
from __future__ import annotations


class RestartRequested(Exception):
    """The startup wrote RESTARTING with a start point we have not taken yet."""


class Fatal(Exception):
    """Leave with a FATAL line (exit 1); ``stream_failure`` marks a lost or impossible stream.

    Under ``concurrent`` and ``walreceiver_restores`` a stream failure is not
    a way out: the walreceiver logs it at LOG level and carries on.
    """

    def __init__(self, message: str, detail: str | None = None, reason: str = "error",
                 stream_failure: bool = False):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.reason = reason
        self.stream_failure = stream_failure

    def text(self) -> str:
        return self.message + (f"\nDETAIL:  {self.detail}" if self.detail else "")


class RestoreFailed(Fatal):
    """restore_command failed the way PostgreSQL treats as fatal: FATAL, exit 1, and ``restore_fatal`` set so the
    startup ends recovery as PostgreSQL's startup process would."""

    def __init__(self, message: str):
        super().__init__(message, reason="restore failed")


class Panic(Fatal):
    """A WAL file write or fsync failed: PostgreSQL PANICs; we exit as a crash (code 3)."""


class StopRequested(Exception):
    """SIGTERM, or the startup process wrote STOPPING/STOPPED."""


class PostmasterDied(Exception):
    pass

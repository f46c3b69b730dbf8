"""The one exception type of the xlog package.

Owns WalError: raised for WAL that fails PostgreSQL 15's checks (the message
is PostgreSQL's wording, so it can be logged as is) and for misuse of the
writer (resuming where there is no WAL to resume from).
"""
from __future__ import annotations


class WalError(Exception):
    """Invalid WAL. str(err) is the PostgreSQL-style message; lsn is where, if known."""

    def __init__(self, message: str, lsn: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.lsn = lsn

    def __str__(self) -> str:
        return self.message

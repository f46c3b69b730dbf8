"""What the startup's signal handlers ask for (``Flags``: set by the handlers, nothing else) and the
exceptions that unwind replay when the startup acts on them (at its next check, as PostgreSQL's
HandleStartupProcInterrupts): ``Shutdown`` for SIGTERM, ``Promote`` for a promote request.
"""
from __future__ import annotations

from dataclasses import dataclass


class Promote(Exception):
    """A promote request: finish what is available and end recovery."""


class Shutdown(Exception):
    """SIGTERM: stop replaying and exit."""


@dataclass
class Flags:
    shutdown: bool = False
    promote: bool = False
    reload: bool = False

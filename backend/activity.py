"""Sessions as PostgreSQL shows and signals them: pids, ``pg_stat_activity``, pg_cancel/terminate_backend.

The backend serves every session in one process, so a session's pid is not an OS pid: each session
gets a number of its own above Linux's highest possible pid (``PID_MAX_LIMIT``), so that it can never
be mistaken for a process (a walsender's real pid, say).  ``pg_backend_pid()`` returns it,
BackendKeyData carries it (a CancelRequest names it), ``pg_stat_activity`` lists it and
``pg_cancel_backend`` / ``pg_terminate_backend`` target it.

Who calls what: backend/functions.py runs the SQL functions and the view through the ``Engine``
(backend/sql.py; backend/backend.py implements it over its connections); ``check_signal`` is
PostgreSQL 15's privilege rule (signalfuncs.c): a superuser may signal anyone, anyone else only
sessions of their own role and never a superuser's (role membership, hence pg_signal_backend,
does not exist here).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from backend.nodes import INET, INT4, INT8, NAME, OID, TEXT, TIMESTAMPTZ, XID, Value
from libpq.protocol import SQLError
from storage.roles import as_committed

PID_MAX_LIMIT = 4 * 1024 * 1024        # Linux's ceiling for pid_max (64-bit): no process has a pid above it
_next_pid = itertools.count(PID_MAX_LIMIT + 1)
DATABASE_OID = 5                       # the one database, "postgres", as initdb numbers it


def new_session_pid() -> int:
    """A pid for a new session of this backend process (unique while the process lives)."""
    return next(_next_pid)


@dataclass
class Activity:
    """One row of pg_stat_activity: a client session, or a walsender (``backend_type``)."""
    pid: int
    usename: str | None
    superuser: bool                    # the session's role is a superuser (who may signal it)
    datname: str | None
    application_name: str
    client_addr: str | None
    client_port: int | None
    backend_start_us: int | None       # µs since the Unix epoch, as the other timestamptz values
    xact_start_us: int | None = None
    query_start_us: int | None = None
    state_change_us: int | None = None
    state: str | None = None           # active, idle, idle in transaction, idle in transaction (aborted)
    query: str = ""
    backend_type: str = "client backend"
    usesysid: int | None = None
    backend_xid: int | None = None


COLUMNS: list[tuple[str, int]] = [
    ("datid", OID), ("datname", NAME), ("pid", INT4), ("leader_pid", INT4), ("usesysid", OID),
    ("usename", NAME), ("application_name", TEXT), ("client_addr", INET), ("client_hostname", TEXT),
    ("client_port", INT4), ("backend_start", TIMESTAMPTZ), ("xact_start", TIMESTAMPTZ),
    ("query_start", TIMESTAMPTZ), ("state_change", TIMESTAMPTZ), ("wait_event_type", TEXT),
    ("wait_event", TEXT), ("state", TEXT), ("backend_xid", XID), ("backend_xmin", XID), ("query_id", INT8),
    ("query", TEXT), ("backend_type", TEXT)]


def _caller_role(session: Any) -> Any:
    """The caller's role with its attributes as committed now (backend/roles.py current_role)."""
    role = getattr(session, "role", None)
    store = getattr(session, "store", None)
    return as_committed(role, store.conn) if role is not None and store is not None else role


def view_rows(session: Any, activities: list[Activity]) -> list[list[Value]]:
    """pg_stat_activity as ``session`` may see it: another role's session (for a non-superuser) shows
    pid, user, application and type only, its query as ``<insufficient privilege>``, as PostgreSQL."""
    role = _caller_role(session)
    rows = []
    for a in activities:
        full = role is None or role.superuser or (a.usename is not None and a.usename == role.name)
        if full:
            query: Value = (a.query, TEXT)
            hidden: list[Value] = [
                (a.client_addr, INET), (None, TEXT), (a.client_port, INT4), (a.backend_start_us, TIMESTAMPTZ),
                (a.xact_start_us, TIMESTAMPTZ), (a.query_start_us, TIMESTAMPTZ), (a.state_change_us, TIMESTAMPTZ),
                (None, TEXT), (None, TEXT), (a.state, TEXT), (a.backend_xid, XID), (None, XID), (None, INT8)]
        else:
            query = ("<insufficient privilege>", TEXT)
            hidden = [(None, INET), (None, TEXT), (None, INT4), (None, TIMESTAMPTZ), (None, TIMESTAMPTZ),
                      (None, TIMESTAMPTZ), (None, TIMESTAMPTZ), (None, TEXT), (None, TEXT), (None, TEXT),
                      (None, XID), (None, XID), (None, INT8)]
        datid = DATABASE_OID if a.datname is not None else None
        rows.append([(datid, OID), (a.datname, NAME), (a.pid, INT4), (None, INT4), (a.usesysid, OID),
                     (a.usename, NAME), (a.application_name, TEXT), *hidden, query, (a.backend_type, TEXT)])
    return rows


def check_signal(session: Any, target: Activity, terminate: bool) -> None:
    """PostgreSQL 15's pg_signal_backend privilege rule; raises 42501 (its messages) when refused."""
    role = _caller_role(session)
    if role is None or role.superuser:
        return
    if target.superuser or target.usename is None:
        # A process that advertises no role counts as a superuser's (signalfuncs.c).
        raise SQLError("42501", "must be a superuser to terminate superuser process" if terminate
                       else "must be a superuser to cancel superuser query")
    if target.usename != role.name:
        raise SQLError("42501", "must be a member of the role whose process is being terminated or member of "
                                "pg_signal_backend" if terminate else
                       "must be a member of the role whose query is being canceled or member of pg_signal_backend")

"""The SQL functions walswitch runs (one table, ``FUNCS``, filled by ``@sqlfunc``) and the system views
``pg_stat_replication`` / ``pg_stat_wal_receiver`` read from shared memory.

A function gets the calling session and its evaluated arguments and returns a value; a blocking one
(pg_promote, pg_sleep) is a generator that yields waits (backend/waits.py).  Privileged functions check
the session's role (backend/roles.py).
"""
from __future__ import annotations

import hashlib
import platform
import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from backend import activity, roles
from backend.nodes import (
    BOOL, FLOAT8, INET, INT4, INTERVAL, NAME, NUMERIC, OID, PG_LSN, SERVER_VERSION, TEXT, TIMESTAMPTZ, UNKNOWN, XID,
    Value
)
from backend.values import as_bool, as_int, as_lsn, as_text
from backend.waits import Until, Wait
from libpq.protocol import SQLError
from xlog.lsn import segment_name, segno_of


@dataclass
class FuncDef:
    impl: Callable[..., Any]     # (ctx, args: list[Value]) -> Value  (a generator when blocking)
    nargs: tuple[int, int]
    rettype: int
    blocking: bool = False
    # A blocking function's form that does not wait, for where a statement cannot wait (beside a FROM)
    nowait: Callable[..., Any] | None = None


FUNCS: dict[str, FuncDef] = {}


def sqlfunc(name: str, nargs: tuple[int, int] | int, rettype: int, blocking: bool = False):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        n = (nargs, nargs) if isinstance(nargs, int) else nargs
        FUNCS[name] = FuncDef(fn, n, rettype, blocking)
        return fn
    return deco


def _recovery_error(fn: str | None = None) -> SQLError:
    hint = f"{fn}() cannot be executed during recovery." if fn else \
        "WAL control functions cannot be executed during recovery."
    return SQLError("55000", "recovery is in progress", hint=hint)


@sqlfunc("version", 0, TEXT)
def _f_version(ctx: Any, args: list[Value]) -> Value:
    return (f"PostgreSQL {SERVER_VERSION} on {platform.machine()}-pc-linux-gnu, compiled by Python "
            f"{platform.python_version()}, 64-bit", TEXT)


@sqlfunc("pg_is_in_recovery", 0, BOOL)
def _f_in_recovery(ctx: Any, args: list[Value]) -> Value:
    return (ctx.engine.in_recovery(), BOOL)


def _wal_pos(which: str) -> Callable[[Any, list[Value]], Value]:
    def fn(ctx: Any, args: list[Value]) -> Value:
        if ctx.engine.in_recovery():
            raise _recovery_error()
        return (ctx.engine.wal_position(which), PG_LSN)
    return fn


sqlfunc("pg_current_wal_lsn", 0, PG_LSN)(_wal_pos("write"))
sqlfunc("pg_current_wal_insert_lsn", 0, PG_LSN)(_wal_pos("insert"))
sqlfunc("pg_current_wal_flush_lsn", 0, PG_LSN)(_wal_pos("flush"))


@sqlfunc("pg_switch_wal", 0, PG_LSN)
def _f_switch(ctx: Any, args: list[Value]) -> Value:
    roles.require_superuser(ctx, "permission denied for function pg_switch_wal")
    if ctx.engine.in_recovery():
        raise _recovery_error()
    return (ctx.engine.switch_wal(), PG_LSN)


def _standby_field(ctx: Any, region: str, field: str, typ: int) -> Value:
    """A recovery-progress value from shared memory; NULL on a primary, as PostgreSQL."""
    shared = ctx.engine.shared
    if shared is None or not ctx.engine.in_recovery():
        return (None, typ)
    return (shared.regions[region].get(field) or None, typ)


@sqlfunc("pg_last_wal_receive_lsn", 0, PG_LSN)
def _f_receive_lsn(ctx: Any, args: list[Value]) -> Value:
    return _standby_field(ctx, "walrcv", "flushed_lsn", PG_LSN)


@sqlfunc("pg_last_wal_replay_lsn", 0, PG_LSN)
def _f_replay_lsn(ctx: Any, args: list[Value]) -> Value:
    return _standby_field(ctx, "recovery", "replay_lsn", PG_LSN)


@sqlfunc("pg_last_xact_replay_timestamp", 0, TIMESTAMPTZ)
def _f_replay_ts(ctx: Any, args: list[Value]) -> Value:
    return _standby_field(ctx, "recovery", "last_replay_time_us", TIMESTAMPTZ)


@sqlfunc("pg_promote", (0, 2), BOOL, blocking=True)
def _f_promote(ctx: Any, args: list[Value]) -> Generator[Wait, None, Value]:
    roles.require_superuser(ctx, "permission denied for function pg_promote")
    wait = as_bool(args[0]) if args else True
    wait_seconds = as_int(args[1]) if len(args) > 1 else 60
    if wait_seconds is None or wait_seconds <= 0:
        raise SQLError("22023", '"wait_seconds" must not be negative or zero')
    engine = ctx.engine
    if not engine.in_recovery():
        raise SQLError("55000", "recovery is not in progress",
                       hint="Recovery control functions can only be executed during recovery.")
    engine.request_promote()
    if not wait:
        return (True, BOOL)
    deadline = time.monotonic() + wait_seconds
    while engine.in_recovery():
        if time.monotonic() >= deadline:
            ctx.notice(f"server did not promote within {wait_seconds} second{'s' if wait_seconds != 1 else ''}",
                       "WARNING", "01000")
            return (False, BOOL)
        yield Until(lambda: not engine.in_recovery(), deadline)
    return (True, BOOL)


@sqlfunc("pg_sleep", 1, TEXT, blocking=True)
def _f_sleep(ctx: Any, args: list[Value]) -> Generator[Wait, None, Value]:
    secs = float(as_text(args[0]) or 0)
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        yield Until(lambda: False, deadline)
    return ("", TEXT)


@sqlfunc("pg_walfile_name", 1, TEXT)
def _f_walfile_name(ctx: Any, args: list[Value]) -> Value:
    if ctx.engine.in_recovery():
        raise _recovery_error("pg_walfile_name")
    lsn = as_lsn(args[0])
    if lsn is None:
        return (None, TEXT)
    seg = ctx.engine.segsize()
    # XLByteToPrevSeg: the segment holding the byte before lsn
    return (segment_name(ctx.engine.timeline(), segno_of(max(lsn - 1, 0), seg), seg), TEXT)


@sqlfunc("pg_wal_lsn_diff", 2, NUMERIC)
def _f_lsn_diff(ctx: Any, args: list[Value]) -> Value:
    a, b = as_lsn(args[0]), as_lsn(args[1])
    return (None if a is None or b is None else str(a - b), NUMERIC)


@sqlfunc("pg_reload_conf", 0, BOOL)
def _f_reload_conf(ctx: Any, args: list[Value]) -> Value:
    roles.require_superuser(ctx, "permission denied for function pg_reload_conf")
    ctx.engine.request_reload()
    return (True, BOOL)


@sqlfunc("pg_rotate_logfile", 0, BOOL)
def _f_rotate_logfile(ctx: Any, args: list[Value]) -> Value:
    """Asks the postmaster to rotate log/walswitch.log and returns at once, as PostgreSQL's."""
    roles.require_superuser(ctx, "permission denied for function pg_rotate_logfile")
    ctx.engine.request_logrotate()
    return (True, BOOL)


@sqlfunc("pg_backend_pid", 0, INT4)
def _f_pid(ctx: Any, args: list[Value]) -> Value:
    return (ctx.pid, INT4)


def _signal_target(ctx: Any, pid: int, terminate: bool) -> bool:
    """pg_signal_backend: find the session or walsender, check the privilege, signal it."""
    target = next((a for a in ctx.engine.activity() if a.pid == pid), None)
    if target is None:
        ctx.notice(f"PID {pid} is not a PostgreSQL backend process", "WARNING", "01000")
        return False
    activity.check_signal(ctx, target, terminate)
    ctx.engine.signal_backend(pid, terminate)
    return True


@sqlfunc("pg_cancel_backend", 1, BOOL)
def _f_cancel_backend(ctx: Any, args: list[Value]) -> Value:
    pid = as_int(args[0])
    return (None if pid is None else _signal_target(ctx, pid, terminate=False), BOOL)


def _terminate_args(args: list[Value]) -> tuple[int | None, int]:
    pid = as_int(args[0])
    timeout = as_int(args[1]) if len(args) > 1 else 0
    if timeout is not None and timeout < 0:
        raise SQLError("22003", '"timeout" must not be negative')
    return pid, timeout or 0


def _terminate_nowait(ctx: Any, args: list[Value]) -> Value:
    pid, _timeout = _terminate_args(args)
    return (None if pid is None else _signal_target(ctx, pid, terminate=True), BOOL)


def _terminate(ctx: Any, args: list[Value]) -> Generator[Wait, None, Value]:
    """pg_terminate_backend(pid, timeout ms): with a timeout, wait until the pid is gone."""
    pid, timeout = _terminate_args(args)
    if pid is None:
        return (None, BOOL)
    if not _signal_target(ctx, pid, terminate=True):
        return (False, BOOL)
    if timeout > 0:
        deadline = time.monotonic() + timeout / 1000
        gone = lambda: all(a.pid != pid for a in ctx.engine.activity())  # noqa: E731
        while not gone():
            if time.monotonic() >= deadline:
                ctx.notice(f"backend with PID {pid} did not terminate within {timeout} "
                           f"millisecond{'' if timeout == 1 else 's'}", "WARNING", "01000")
                return (False, BOOL)
            yield Until(gone, deadline)
    return (True, BOOL)


FUNCS["pg_terminate_backend"] = FuncDef(_terminate, (1, 2), BOOL, blocking=True, nowait=_terminate_nowait)


@sqlfunc("current_setting", (1, 2), TEXT)
def _f_current_setting(ctx: Any, args: list[Value]) -> Value:
    name = as_text(args[0]) or ""
    missing_ok = as_bool(args[1]) if len(args) > 1 else False
    v = ctx.show_value(name.lower())
    if v is None:
        if missing_ok:
            return (None, TEXT)
        raise SQLError("42704", f'unrecognized configuration parameter "{name}"')
    return (v, TEXT)


@sqlfunc("current_user", 0, NAME)
def _f_current_user(ctx: Any, args: list[Value]) -> Value:
    return (ctx.role.name if ctx.role is not None else ctx.params.get("user", "postgres"), NAME)


@sqlfunc("current_database", 0, NAME)
def _f_current_database(ctx: Any, args: list[Value]) -> Value:
    return (ctx.params.get("database", ctx.params.get("user", "postgres")), NAME)


def _now(ctx: Any, args: list[Value]) -> Value:
    return (time.time_ns() // 1000, TIMESTAMPTZ)


for _n in ("now", "clock_timestamp", "statement_timestamp", "transaction_timestamp"):
    sqlfunc(_n, 0, TIMESTAMPTZ)(_now)


@sqlfunc("repeat", 2, TEXT)
def _f_repeat(ctx: Any, args: list[Value]) -> Value:
    s, n = as_text(args[0]), as_int(args[1])
    if s is None or n is None:
        return (None, TEXT)
    if len(s) * max(n, 0) > 256 * 1024 * 1024:
        raise SQLError("54000", "requested length too large")
    return (s * max(n, 0), TEXT)


@sqlfunc("md5", 1, TEXT)
def _f_md5(ctx: Any, args: list[Value]) -> Value:
    s = as_text(args[0])
    return (None if s is None else hashlib.md5(s.encode()).hexdigest(), TEXT)


@sqlfunc("length", 1, INT4)
def _f_length(ctx: Any, args: list[Value]) -> Value:
    s = as_text(args[0])
    return (None if s is None else len(s), INT4)


sqlfunc("char_length", 1, INT4)(_f_length)
sqlfunc("octet_length", 1, INT4)(lambda ctx, a: (None if a[0][0] is None else len(as_text(a[0]).encode()), INT4))
sqlfunc("upper", 1, TEXT)(lambda ctx, a: (None if a[0][0] is None else as_text(a[0]).upper(), TEXT))
sqlfunc("lower", 1, TEXT)(lambda ctx, a: (None if a[0][0] is None else as_text(a[0]).lower(), TEXT))
sqlfunc("concat", (0, 100), TEXT)(lambda ctx, a: ("".join(as_text(v) or "" for v in a), TEXT))
sqlfunc("coalesce", (1, 100), UNKNOWN)(lambda ctx, a: next((v for v in a if v[0] is not None), (None, TEXT)))
sqlfunc("random", 0, FLOAT8)(lambda ctx, a: (random.random(), FLOAT8))


# ---------------------------------------------------------------------------
# relations

REL_COLUMNS: dict[str, list[tuple[str, int]]] = {
    "kv": [("key", TEXT), ("value", TEXT)],
    "pg_stat_replication": [
        ("pid", INT4), ("usesysid", OID), ("usename", NAME), ("application_name", TEXT),
        ("client_addr", INET), ("client_hostname", TEXT), ("client_port", INT4),
        ("backend_start", TIMESTAMPTZ), ("backend_xmin", XID), ("state", TEXT),
        ("sent_lsn", PG_LSN), ("write_lsn", PG_LSN), ("flush_lsn", PG_LSN), ("replay_lsn", PG_LSN),
        ("write_lag", INTERVAL), ("flush_lag", INTERVAL), ("replay_lag", INTERVAL),
        ("sync_priority", INT4), ("sync_state", TEXT), ("reply_time", TIMESTAMPTZ)],
    "pg_stat_wal_receiver": [
        ("pid", INT4), ("status", TEXT), ("receive_start_lsn", PG_LSN), ("receive_start_tli", INT4),
        ("written_lsn", PG_LSN), ("flushed_lsn", PG_LSN), ("received_tli", INT4),
        ("last_msg_send_time", TIMESTAMPTZ), ("last_msg_receipt_time", TIMESTAMPTZ),
        ("latest_end_lsn", PG_LSN), ("latest_end_time", TIMESTAMPTZ), ("slot_name", TEXT),
        ("sender_host", TEXT), ("sender_port", INT4), ("conninfo", TEXT)],
}
REL_COLUMNS["pg_stat_activity"] = activity.COLUMNS
REL_ALIASES = {"public.kv": "kv", "pg_catalog.pg_stat_replication": "pg_stat_replication",
               "pg_catalog.pg_stat_activity": "pg_stat_activity",
               "pg_catalog.pg_stat_wal_receiver": "pg_stat_wal_receiver",
               "pg_catalog.pg_roles": "pg_roles", "pg_catalog.pg_authid": "pg_authid"}
REL_COLUMNS.update(roles.VIEW_COLUMNS)

# WalSndState as PostgreSQL orders it (walsender_private.h)
WALSND_STATES = ("startup", "backup", "catchup", "streaming", "stopping")
WALRCV_STATES = ("stopped", "starting", "streaming", "waiting", "restarting", "stopping")


def resolve_relation(name: str) -> str:
    rel = REL_ALIASES.get(name, name)
    if rel not in REL_COLUMNS:
        raise SQLError("42P01", f'relation "{name}" does not exist')
    return rel


def _opt(v: int | None, oid: int, null_if: int = 0) -> Value:
    return (None if v is None or v == null_if else v, oid)


def stat_replication_rows(shared: Any) -> list[list[Value]]:
    rows = []
    if shared is None:
        return rows
    for slot in shared.walsnd:
        if slot.get("pid") == 0:
            continue
        s = slot.read()
        if not s["pid"]:
            continue
        st = s["state"]
        state = WALSND_STATES[st] if 0 <= st < len(WALSND_STATES) else str(st)
        rows.append([
            (s["pid"], INT4), (10, OID), ("postgres", NAME), (s["application_name"], TEXT),
            (s["client_addr"] or None, INET), (None, TEXT),
            (s["client_port"] if s["client_addr"] else -1, INT4),
            _opt(s["backend_start_us"], TIMESTAMPTZ), (None, XID), (state, TEXT),
            _opt(s["sent_lsn"], PG_LSN), _opt(s["write_lsn"], PG_LSN), _opt(s["flush_lsn"], PG_LSN),
            _opt(s["replay_lsn"], PG_LSN),
            _opt(s["write_lag_us"], INTERVAL, -1), _opt(s["flush_lag_us"], INTERVAL, -1),
            _opt(s["replay_lag_us"], INTERVAL, -1),
            (0, INT4), ("async", TEXT), _opt(s["reply_time_us"], TIMESTAMPTZ)])
    return rows


def stat_wal_receiver_rows(shared: Any) -> list[list[Value]]:
    if shared is None:
        return []
    s = shared.walrcv.read()
    if not s["pid"]:
        return []
    st = s["state"]
    status = WALRCV_STATES[st] if 0 <= st < len(WALRCV_STATES) else str(st)
    return [[
        (s["pid"], INT4), (status, TEXT), _opt(s["receive_start"], PG_LSN), _opt(s["receive_start_tli"], INT4),
        _opt(s["written_lsn"], PG_LSN), _opt(s["flushed_lsn"], PG_LSN), _opt(s["received_tli"], INT4),
        _opt(s["last_msg_send_us"], TIMESTAMPTZ), _opt(s["last_msg_recv_us"], TIMESTAMPTZ),
        _opt(s["latest_end_lsn"], PG_LSN), _opt(s["latest_end_time_us"], TIMESTAMPTZ), (None, TEXT),
        (s["sender_host"] or None, TEXT), _opt(s["sender_port"], INT4), (_mask_conninfo(s["conninfo"]), TEXT)]]


def _mask_conninfo(ci: str) -> str | None:
    if not ci:
        return None
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1********", ci)



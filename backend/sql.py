"""The SQL surface: the executor for table ``kv`` (statements parsed by backend/parse.py).

What it owns: the execution of the statements walswitch accepts (DESIGN.md §6),
their PostgreSQL command tags and error codes, the per-session transaction
state machine (idle / in block / failed, plus PostgreSQL's implicit block for
a multi-statement Query), and the system views ``pg_stat_replication`` and
``pg_stat_wal_receiver``.

What it does not own: WAL and durability.  The executor talks to an
``Engine`` (the backend process, or a stand-in in unit tests): it asks the
engine to log each change (a KV record), to log a commit (returns a
``CommitWait`` the session yields; the backend resumes the session once the
commit is flushed and applied: group commit), or an abort.

A Query message runs as a generator (``Session.run``): it writes protocol
messages into ``Session.out`` and yields a ``Wait`` whenever it must not go
on before something happens elsewhere (a commit's fsync, a promotion).  The
whole query string is parsed before anything runs, as PostgreSQL does: a
syntax error anywhere means no statement of the string executes.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import random
import re
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from backend import roles
from backend.nodes import (BOOL, CAST_TYPES, FLOAT8, INET, INT4, INT8, INTERVAL, NAME, NUMERIC, OID, PG_LSN,
                           SERVER_VERSION, TEXT, TIMESTAMPTZ, TYPE_NAMES, UNKNOWN, XID, Begin, BinOp, Cast,
                           Checkpoint, ColRef, Commit, Const, Delete, Expr, Func, InList, Insert, IsNull, Param,
                           RoleStmt, Rollback, Select, SelItem, SetStmt, Show, Stmt, UnOp, Update, Value)
from backend.parse import parse
from libpq import protocol as P
from libpq.protocol import SQLError
from utils.config import READ_ONLY, SETTINGS
from xlog.lsn import format_lsn, parse_lsn, segment_name, segno_of



# ---------------------------------------------------------------------------
# waits the session generator yields to the backend

class Panic(Exception):
    """WAL or store failure: the backend must exit so that crash recovery repairs it."""


class Wait:
    """Something a session waits for; the backend resumes the generator after it."""


@dataclass
class CommitWait(Wait):
    """A logged commit: resume once its WAL is flushed and its changes applied."""
    txn: "Txn"
    end_lsn: int


@dataclass
class Until(Wait):
    """Resume once ``pred()`` is true or the monotonic ``deadline`` passed."""
    pred: Callable[[], bool]
    deadline: float


# ---------------------------------------------------------------------------
# values and formatting

def format_timestamptz(unix_us: int) -> str:
    """PostgreSQL's timestamptz text in TimeZone UTC: trailing zeros of the fraction dropped."""
    secs, us = divmod(int(unix_us), 1_000_000)
    dt = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    s = dt.strftime("%Y-%m-%d %H:%M:%S")
    if us:
        s += ("." + f"{us:06d}").rstrip("0")
    return s + "+00"


def format_interval(us: int) -> str:
    """An interval of microseconds as PostgreSQL prints it (IntervalStyle postgres)."""
    neg = us < 0
    us = abs(int(us))
    secs, frac = divmod(us, 1_000_000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = f"{h:02d}:{m:02d}:{s:02d}"
    if frac:
        out += ("." + f"{frac:06d}").rstrip("0")
    return ("-" if neg else "") + out


def to_text(v: Value) -> str | None:
    """Output form of a value (text protocol)."""
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return "t" if val else "f"
    if oid == PG_LSN:
        return format_lsn(val)
    if oid == TIMESTAMPTZ:
        return format_timestamptz(val)
    if oid == INTERVAL:
        return format_interval(val)
    if oid == FLOAT8:
        f = float(val)
        if f != f or f in (float("inf"), float("-inf")):
            return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(f)]
        return str(int(f)) if f == int(f) and abs(f) < 1e15 else repr(f)
    return str(val)


def as_text(v: Value) -> str | None:
    """A value cast to text (bool casts to 'true'/'false', as ::text does)."""
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return "true" if val else "false"
    return to_text(v)


def _bad_input(typ: str, s: Any) -> SQLError:
    return SQLError("22P02", f'invalid input syntax for type {typ}: "{s}"')


def as_int(v: Value, typ: str = "integer") -> int | None:
    val, oid = v
    if val is None:
        return None
    if oid in (INT4, INT8, OID, XID) or (isinstance(val, int) and not isinstance(val, bool)):
        return int(val)
    if oid in (NUMERIC, FLOAT8):
        return int(round(float(val)))
    s = str(val).strip()
    if not re.fullmatch(r"[-+]?\d+", s):
        raise _bad_input(typ, val)
    return int(s)


def as_bool(v: Value) -> bool | None:
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return bool(val)
    s = str(val).strip().lower()
    if s in ("t", "true", "yes", "y", "on", "1"):
        return True
    if s in ("f", "false", "no", "n", "off", "0"):
        return False
    raise _bad_input("boolean", val)


def as_lsn(v: Value) -> int | None:
    val, oid = v
    if val is None:
        return None
    if oid == PG_LSN:
        return int(val)
    try:
        return parse_lsn(str(val))
    except ValueError:
        raise _bad_input("pg_lsn", val) from None


def cast(v: Value, typename: str) -> Value:
    oid = CAST_TYPES.get(typename)
    if oid is None:
        raise SQLError("42704", f'type "{typename}" does not exist')
    val, src = v
    if val is None:
        return (None, oid)
    if oid in (TEXT, NAME):
        return (as_text(v), oid)
    if oid in (INT4, INT8, OID, XID):
        return (as_int(v, TYPE_NAMES[oid]), oid)
    if oid == BOOL:
        return (as_bool(v), oid)
    if oid == PG_LSN:
        return (as_lsn(v), oid)
    if oid == NUMERIC:
        s = to_text(v) if src != UNKNOWN else str(val).strip()
        if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", s or ""):
            raise _bad_input("numeric", val)
        return (s, NUMERIC)
    if oid == FLOAT8:
        try:
            return (float(val), FLOAT8)
        except (TypeError, ValueError):
            raise _bad_input("double precision", val) from None
    if oid == INTERVAL:
        if src == INTERVAL:
            return v
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|min|minutes?)?\s*",
                         str(val))
        if not m:
            raise _bad_input("interval", val)
        mult = {"ms": 1000, "s": 1_000_000, "min": 60_000_000}
        unit = (m.group(2) or "s")
        unit = "ms" if unit.startswith("m") and unit not in ("min", "minute", "minutes") else (
            "min" if unit.startswith("min") else "s")
        return (int(float(m.group(1)) * mult[unit]), INTERVAL)
    if oid == TIMESTAMPTZ:
        if src == TIMESTAMPTZ:
            return v
        raise _bad_input("timestamp with time zone", val)
    return (as_text(v), oid)


def type_name(v: Value) -> str:
    return TYPE_NAMES.get(v[1], "unknown")


# ---------------------------------------------------------------------------
# functions

@dataclass
class FuncDef:
    impl: Callable[..., Any]     # (ctx, args: list[Value]) -> Value  (a generator when blocking)
    nargs: tuple[int, int]
    rettype: int
    blocking: bool = False


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
def _f_version(ctx: "Session", args: list[Value]) -> Value:
    return (f"PostgreSQL {SERVER_VERSION} on {platform.machine()}-pc-linux-gnu, compiled by Python "
            f"{platform.python_version()}, 64-bit", TEXT)


@sqlfunc("pg_is_in_recovery", 0, BOOL)
def _f_in_recovery(ctx: "Session", args: list[Value]) -> Value:
    return (ctx.engine.in_recovery(), BOOL)


def _wal_pos(which: str) -> Callable[["Session", list[Value]], Value]:
    def fn(ctx: "Session", args: list[Value]) -> Value:
        if ctx.engine.in_recovery():
            raise _recovery_error()
        return (ctx.engine.wal_position(which), PG_LSN)
    return fn


sqlfunc("pg_current_wal_lsn", 0, PG_LSN)(_wal_pos("write"))
sqlfunc("pg_current_wal_insert_lsn", 0, PG_LSN)(_wal_pos("insert"))
sqlfunc("pg_current_wal_flush_lsn", 0, PG_LSN)(_wal_pos("flush"))


@sqlfunc("pg_switch_wal", 0, PG_LSN)
def _f_switch(ctx: "Session", args: list[Value]) -> Value:
    roles.require_superuser(ctx, "permission denied for function pg_switch_wal")
    if ctx.engine.in_recovery():
        raise _recovery_error()
    return (ctx.engine.switch_wal(), PG_LSN)


def _standby_field(ctx: "Session", region: str, field: str, typ: int) -> Value:
    """A recovery-progress value from shared memory; NULL on a primary, as PostgreSQL."""
    shared = ctx.engine.shared
    if shared is None or not ctx.engine.in_recovery():
        return (None, typ)
    return (shared.regions[region].get(field) or None, typ)


@sqlfunc("pg_last_wal_receive_lsn", 0, PG_LSN)
def _f_receive_lsn(ctx: "Session", args: list[Value]) -> Value:
    return _standby_field(ctx, "walrcv", "flushed_lsn", PG_LSN)


@sqlfunc("pg_last_wal_replay_lsn", 0, PG_LSN)
def _f_replay_lsn(ctx: "Session", args: list[Value]) -> Value:
    return _standby_field(ctx, "recovery", "replay_lsn", PG_LSN)


@sqlfunc("pg_last_xact_replay_timestamp", 0, TIMESTAMPTZ)
def _f_replay_ts(ctx: "Session", args: list[Value]) -> Value:
    return _standby_field(ctx, "recovery", "last_replay_time_us", TIMESTAMPTZ)


@sqlfunc("pg_promote", (0, 2), BOOL, blocking=True)
def _f_promote(ctx: "Session", args: list[Value]) -> Generator[Wait, None, Value]:
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
def _f_sleep(ctx: "Session", args: list[Value]) -> Generator[Wait, None, Value]:
    secs = float(as_text(args[0]) or 0)
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        yield Until(lambda: False, deadline)
    return ("", TEXT)


@sqlfunc("pg_walfile_name", 1, TEXT)
def _f_walfile_name(ctx: "Session", args: list[Value]) -> Value:
    if ctx.engine.in_recovery():
        raise _recovery_error("pg_walfile_name")
    lsn = as_lsn(args[0])
    if lsn is None:
        return (None, TEXT)
    seg = ctx.engine.segsize()
    # XLByteToPrevSeg: the segment holding the byte before lsn
    return (segment_name(ctx.engine.timeline(), segno_of(max(lsn - 1, 0), seg), seg), TEXT)


@sqlfunc("pg_wal_lsn_diff", 2, NUMERIC)
def _f_lsn_diff(ctx: "Session", args: list[Value]) -> Value:
    a, b = as_lsn(args[0]), as_lsn(args[1])
    return (None if a is None or b is None else str(a - b), NUMERIC)


@sqlfunc("pg_reload_conf", 0, BOOL)
def _f_reload_conf(ctx: "Session", args: list[Value]) -> Value:
    roles.require_superuser(ctx, "permission denied for function pg_reload_conf")
    ctx.engine.request_reload()
    return (True, BOOL)


@sqlfunc("pg_backend_pid", 0, INT4)
def _f_pid(ctx: "Session", args: list[Value]) -> Value:
    return (ctx.pid, INT4)


@sqlfunc("current_setting", (1, 2), TEXT)
def _f_current_setting(ctx: "Session", args: list[Value]) -> Value:
    name = as_text(args[0]) or ""
    missing_ok = as_bool(args[1]) if len(args) > 1 else False
    v = ctx.show_value(name.lower())
    if v is None:
        if missing_ok:
            return (None, TEXT)
        raise SQLError("42704", f'unrecognized configuration parameter "{name}"')
    return (v, TEXT)


@sqlfunc("current_user", 0, NAME)
def _f_current_user(ctx: "Session", args: list[Value]) -> Value:
    return (ctx.role.name if ctx.role is not None else ctx.params.get("user", "postgres"), NAME)


@sqlfunc("current_database", 0, NAME)
def _f_current_database(ctx: "Session", args: list[Value]) -> Value:
    return (ctx.params.get("database", ctx.params.get("user", "postgres")), NAME)


def _now(ctx: "Session", args: list[Value]) -> Value:
    return (time.time_ns() // 1000, TIMESTAMPTZ)


for _n in ("now", "clock_timestamp", "statement_timestamp", "transaction_timestamp"):
    sqlfunc(_n, 0, TIMESTAMPTZ)(_now)


@sqlfunc("repeat", 2, TEXT)
def _f_repeat(ctx: "Session", args: list[Value]) -> Value:
    s, n = as_text(args[0]), as_int(args[1])
    if s is None or n is None:
        return (None, TEXT)
    if len(s) * max(n, 0) > 256 * 1024 * 1024:
        raise SQLError("54000", "requested length too large")
    return (s * max(n, 0), TEXT)


@sqlfunc("md5", 1, TEXT)
def _f_md5(ctx: "Session", args: list[Value]) -> Value:
    s = as_text(args[0])
    return (None if s is None else hashlib.md5(s.encode()).hexdigest(), TEXT)


@sqlfunc("length", 1, INT4)
def _f_length(ctx: "Session", args: list[Value]) -> Value:
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
REL_ALIASES = {"public.kv": "kv", "pg_catalog.pg_stat_replication": "pg_stat_replication",
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


# ---------------------------------------------------------------------------
# the engine interface and transactions

class Engine:
    """What the executor needs from the process it runs in (the backend)."""

    config: Any = None
    shared: Any = None
    store: Any = None                    # storage.kvstore.KVStore
    datadir: str = ""

    def in_recovery(self) -> bool:
        raise NotImplementedError

    def log_change(self, txn: "Txn", op: str, key: str, value: str | None) -> None:
        """Write-ahead log one change of txn (assigns its xid on first use)."""
        raise NotImplementedError

    def log_commit(self, txn: "Txn") -> CommitWait | None:
        """Log txn's commit; None when it wrote nothing (no commit record needed)."""
        raise NotImplementedError

    def log_abort(self, txn: "Txn") -> None:
        raise NotImplementedError

    def wal_position(self, which: str) -> int:
        raise NotImplementedError

    def switch_wal(self) -> int:
        raise NotImplementedError

    def checkpoint(self) -> None:
        raise NotImplementedError

    def request_promote(self) -> None:
        raise NotImplementedError

    def request_reload(self) -> None:
        raise NotImplementedError

    def timeline(self) -> int:
        return 1

    def segsize(self) -> int:
        return 16 * 1024 * 1024


_GONE = object()


@dataclass(eq=False)
class Txn:
    read_only: bool = False
    xid: int = 0                          # 0 until the first write
    first_lsn: int | None = None          # start of its first WAL record
    changes: list[tuple[str, str, str | None]] = field(default_factory=list)
    overlay: dict[str, Any] = field(default_factory=dict)   # key -> value or _GONE

    def add(self, op: str, key: str, value: str | None) -> None:
        self.changes.append((op, key, value))
        self.overlay[key] = value if op == "put" else _GONE


# ---------------------------------------------------------------------------
# the session

SHOW_ALL_COLUMNS = [("name", TEXT), ("setting", TEXT), ("description", TEXT)]

class Session:
    """One client's SQL state; ``run`` executes a Query message."""

    def __init__(self, engine: Engine, pid: int = 0, params: dict[str, str] | None = None):
        self.engine = engine
        self.pid = pid or os.getpid()
        self.params = dict(params or {})
        self.out = bytearray()
        self.block = False           # inside BEGIN ... COMMIT
        self.failed = False          # the block had an error
        self.txn: Txn | None = None
        self.gucs: dict[str, str] = {}
        self.role: Any = None            # storage.roles.RoleInfo, set after authentication
        if self.params.get("application_name"):
            self.gucs["application_name"] = self.params["application_name"]
        self._implicit = False
        self.capture: Any = None                     # the portal collecting results (backend/extended.py)
        self.bound: list[Value] | None = None        # $n values of the portal being executed
        self.bound_types: list[int] | None = None    # their declared types (0: not given)

    # -- protocol output
    def send(self, data: bytes) -> None:
        self.out += data

    # Results go through these three, so that a portal (backend/extended.py) can hold them back, limit
    # them and choose text or binary per column; a simple Query sends them at once.
    def result_columns(self, cols: list[tuple[str, int]]) -> None:
        if self.capture is not None:
            self.capture.columns = cols
        else:
            self.send(P.row_description(cols))

    def result_row(self, values: list[Value]) -> None:
        if self.capture is not None:
            self.capture.rows.append(values)
        else:
            self.send(P.data_row([to_text(v) for v in values]))

    def complete(self, tag: str) -> None:
        if self.capture is not None:
            self.capture.tag = tag
        else:
            self.send(P.command_complete(tag))

    def describe(self, st: Stmt | None) -> list[tuple[str, int]] | None:
        """The columns a statement returns (RowDescription), or None (NoData)."""
        if isinstance(st, Select):
            return self.select_columns(st)[1]
        if isinstance(st, Show):
            return SHOW_ALL_COLUMNS if st.name == "all" else self.show_columns(st)
        return None

    @staticmethod
    def show_columns(st: Show) -> list[tuple[str, int]]:
        return [({"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}.get(
            st.name, st.name), TEXT)]

    def notice(self, message: str, severity: str = "NOTICE", sqlstate: str = "00000") -> None:
        self.send(P.notice_response(message, severity, sqlstate))

    @property
    def status(self) -> bytes:
        """ReadyForQuery status byte."""
        if self.failed:
            return b"E"
        return b"T" if self.block else b"I"

    # -- transactions
    def _txn(self, read_only: bool = False) -> Txn:
        if self.txn is None:
            self.txn = Txn(read_only=read_only)
        return self.txn

    def _commit(self) -> Generator[Wait, None, None]:
        txn, self.txn = self.txn, None
        if txn is not None:
            w = self.engine.log_commit(txn)
            if w is not None:
                yield w

    def _abort(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None and txn.xid:
            self.engine.log_abort(txn)

    def abort_all(self) -> None:
        """Connection ends: abort whatever is open."""
        self._abort()
        self.block = self.failed = False

    def in_progress_first_lsn(self) -> int | None:
        t = self.txn
        return t.first_lsn if t is not None and t.xid else None

    # -- running a Query message
    def run(self, sql: str, stmts: "list[Stmt] | None" = None) -> Generator[Wait, None, None]:
        """Execute a simple Query; output goes to ``out`` (ReadyForQuery not included).

        ``stmts``: already parsed (the backend parses very large statements off its loop).
        """
        try:
            stmts = parse(sql) if stmts is None else stmts
        except SQLError as e:
            self._fail(e)
            return
        if not stmts:
            self.send(P.empty_query_response())
            return
        self._implicit = len(stmts) > 1
        try:
            for st in stmts:
                try:
                    if self.failed and not st.txn_control:
                        raise SQLError("25P02", "current transaction is aborted, commands ignored "
                                                "until end of transaction block")
                    yield from self.execute(st)
                    if not self.block and not self._implicit:
                        yield from self._commit()
                except SQLError as e:
                    self._fail(e)
                    return
            if not self.block:
                yield from self._commit()
        finally:
            self._implicit = False

    def _fail(self, e: SQLError) -> None:
        self.send(e.encode())
        if self.block:
            self.failed = True
        self._abort()

    def execute(self, st: Stmt) -> Generator[Wait, None, None]:
        if isinstance(st, Select):
            yield from self.exec_select(st)
        elif isinstance(st, Insert):
            self.exec_insert(st)
        elif isinstance(st, Delete):
            self.exec_delete(st)
        elif isinstance(st, Update):
            self.exec_update(st)
        elif isinstance(st, Begin):
            self.exec_begin(st)
        elif isinstance(st, Commit):
            yield from self.exec_commit()
        elif isinstance(st, Rollback):
            self.exec_rollback()
        elif isinstance(st, Show):
            self.exec_show(st)
        elif isinstance(st, SetStmt):
            self.exec_set(st)
        elif isinstance(st, RoleStmt):
            self.complete(roles.run_role_sql(self, st.text))
        elif isinstance(st, Checkpoint):
            roles.require_superuser(self, "must be superuser to do CHECKPOINT")
            self.engine.checkpoint()
            self.complete("CHECKPOINT")
        else:  # pragma: no cover - the parser makes only the above
            raise SQLError("0A000", "statement not supported")

    # -- transaction control
    def exec_begin(self, st: Begin) -> None:
        if self.block:
            self.notice("there is already a transaction in progress", "WARNING", "25001")
        else:
            self.block = True
            self._txn().read_only |= st.read_only
        self.complete("BEGIN")

    def exec_commit(self) -> Generator[Wait, None, None]:
        if self.failed:
            self.failed = self.block = False
            self._abort()
            self.complete("ROLLBACK")
            return
        if self.block or self._implicit:
            self.block = False
            yield from self._commit()
        else:
            self.notice("there is no transaction in progress", "WARNING", "25P01")
        self.complete("COMMIT")

    def exec_rollback(self) -> None:
        if self.failed or self.block or self._implicit:
            self.failed = self.block = False
            self._abort()
        else:
            self.notice("there is no transaction in progress", "WARNING", "25P01")
        self.complete("ROLLBACK")

    # -- settings
    def show_value(self, name: str) -> str | None:
        if name in self.gucs:
            return self.gucs[name]
        eng = self.engine
        special = {
            "transaction_isolation": "read committed",
            "default_transaction_isolation": "read committed",
            "transaction_read_only": "on" if (eng.in_recovery() or (self.txn and self.txn.read_only)) else "off",
            "default_transaction_read_only": "off",
            "client_encoding": "UTF8", "datestyle": "ISO, MDY", "timezone": "UTC", "intervalstyle": "postgres",
            "standard_conforming_strings": "on",
            "is_superuser": "on" if self.role is None or self.role.superuser else "off",
            "session_authorization": self.role.name if self.role is not None else self.params.get("user", "postgres"),
            "server_version": "15.0", "server_version_num": "150000", "wal_level": "replica",
            "in_hot_standby": "on" if eng.in_recovery() else "off", "search_path": '"$user", public',
            "application_name": self.params.get("application_name", ""),
            "data_directory": eng.datadir, "lc_messages": "C", "lc_collate": "C", "lc_ctype": "C",
            "wal_segment_size": _format_bytes(eng.segsize()), "full_page_writes": "on",
        }
        if special.get(name) is not None:
            return special[name]
        cfg = eng.config
        if cfg is not None:
            return cfg.show(name)
        return None

    def exec_show(self, st: Show) -> None:
        if st.name == "all":
            names = sorted(set(SETTINGS) | set(READ_ONLY) | set(self.gucs))
            self.result_columns(SHOW_ALL_COLUMNS)
            n = 0
            for name in names:
                v = self.show_value(name)
                if v is None:
                    continue
                desc = SETTINGS[name].desc if name in SETTINGS else ""
                self.result_row([(name, TEXT), (v, TEXT), (desc, TEXT)])
                n += 1
            self.complete("SHOW")
            return
        v = self.show_value(st.name)
        if v is None:
            raise SQLError("42704", f'unrecognized configuration parameter "{st.name}"')
        self.result_columns(self.show_columns(st))
        self.result_row([(v, TEXT)])
        self.complete("SHOW")

    def exec_set(self, st: SetStmt) -> None:
        if st.name == "all":
            self.gucs.clear()
        elif st.name is not None:
            if st.value is None:
                self.gucs.pop(st.name, None)
            else:
                self.gucs[st.name] = st.value
        self.complete(st.tag)

    # -- reading kv (own changes visible)
    @property
    def store(self) -> Any:
        return self.engine.store

    def kv_lookup(self, key: str) -> tuple[bool, str | None]:
        t = self.txn
        if t is not None and key in t.overlay:
            v = t.overlay[key]
            return (False, None) if v is _GONE else (True, v)
        return self.store.lookup(key)

    def kv_rows(self) -> list[tuple[str, str | None]]:
        rows = self.store.items()
        t = self.txn
        if t is None or not t.overlay:
            return rows
        merged = dict(rows)
        for k, v in t.overlay.items():
            if v is _GONE:
                merged.pop(k, None)
            else:
                merged[k] = v
        return sorted(merged.items())

    def kv_count(self) -> int:
        t = self.txn
        if t is None or not t.overlay:
            return self.store.count()
        return len(self.kv_rows())

    # -- writing kv
    def _check_writable(self, what: str) -> Txn:
        txn = self._txn()
        if txn.read_only or self.engine.in_recovery():
            raise SQLError("25006", f"cannot execute {what} in a read-only transaction")
        return txn

    def _write(self, txn: Txn, op: str, key: str, value: str | None) -> None:
        self.engine.log_change(txn, op, key, value)
        txn.add(op, key, value)

    def exec_insert(self, st: Insert) -> None:
        rel = resolve_relation(st.table)
        if rel != "kv":
            raise SQLError("42809", f'cannot insert into view "{rel}"')
        cols = st.columns or ["key", "value"]
        for c in cols:
            if c not in ("key", "value"):
                raise SQLError("42703", f'column "{c}" of relation "kv" does not exist')
        if len(set(cols)) != len(cols):
            dup = next(c for c in cols if cols.count(c) > 1)
            raise SQLError("42701", f'column "{dup}" specified more than once')
        rows: list[tuple[str, str | None]] = []
        for exprs in st.rows:
            if len(exprs) > len(cols):
                raise SQLError("42601", "INSERT has more expressions than target columns")
            if st.columns is not None and len(exprs) < len(cols):
                raise SQLError("42601", "INSERT has more target columns than expressions")
            rec = {"key": None, "value": None}
            for c, e in zip(cols, exprs):
                rec[c] = as_text(self.eval(e, None))
            if rec["key"] is None:
                vals = ", ".join("null" if rec[c] is None else rec[c] for c in ("key", "value"))
                raise SQLError("23502", 'null value in column "key" of relation "kv" violates not-null constraint',
                               detail=f"Failing row contains ({vals}).")
            rows.append((rec["key"], rec["value"]))
        txn = self._check_writable("INSERT")
        n = 0
        for key, value in rows:
            if st.on_conflict == "nothing" and self.kv_lookup(key)[0]:
                continue
            self._write(txn, "put", key, value)
            n += 1
        self.complete(f"INSERT 0 {n}")

    def _matching_keys(self, where: Expr | None) -> list[tuple[str, str | None]]:
        key = _key_equality(where)
        if key is not None:
            found, value = self.kv_lookup(key)
            return [(key, value)] if found else []
        out = []
        for k, v in self.kv_rows():
            if where is None or self._truthy(self.eval(where, {"key": (k, TEXT), "value": (v, TEXT)})):
                out.append((k, v))
        return out

    def exec_delete(self, st: Delete) -> None:
        rel = resolve_relation(st.table)
        if rel != "kv":
            raise SQLError("42809", f'cannot delete from view "{rel}"')
        self._check_columns(st.where, "kv")
        matched = self._matching_keys(st.where)
        txn = self._check_writable("DELETE")
        for k, _v in matched:
            self._write(txn, "delete", k, None)
        self.complete(f"DELETE {len(matched)}")

    def exec_update(self, st: Update) -> None:
        rel = resolve_relation(st.table)
        if rel != "kv":
            raise SQLError("55000", f'cannot update view "{rel}"')
        for col, _e in st.sets:
            if col not in ("key", "value"):
                raise SQLError("42703", f'column "{col}" of relation "kv" does not exist')
        self._check_columns(st.where, "kv")
        matched = self._matching_keys(st.where)
        txn = self._check_writable("UPDATE")
        for k, v in matched:
            row = {"key": (k, TEXT), "value": (v, TEXT)}
            new = {"key": k, "value": v}
            for col, e in st.sets:
                new[col] = as_text(self.eval(e, row))
            if new["key"] is None:
                raise SQLError("23502", 'null value in column "key" of relation "kv" violates not-null constraint')
            if new["key"] != k:
                self._write(txn, "delete", k, None)
            self._write(txn, "put", new["key"], new["value"])
        self.complete(f"UPDATE {len(matched)}")

    # -- SELECT
    def _check_columns(self, e: Expr | None, rel: str | None) -> None:
        """Raise 42703 for a column the relation lacks (before any row is read)."""
        if e is None:
            return
        names = {c for c, _ in REL_COLUMNS[rel]} if rel else set()
        for ref in walk(e):
            if isinstance(ref, ColRef) and ref.name not in names:
                full = f"{ref.qual}.{ref.name}" if ref.qual else ref.name
                raise SQLError("42703", f'column "{full}" does not exist')
            if isinstance(ref, Func) and ref.name not in FUNCS and ref.name != "count":
                self._unknown_function(ref, rel)

    def _unknown_function(self, f: Func, rel: str | None) -> None:
        types = []
        for a in f.args:
            if isinstance(a, Const):
                types.append(TYPE_NAMES.get(a.oid, "unknown"))
            elif isinstance(a, ColRef) and rel:
                types.append(TYPE_NAMES.get(dict(REL_COLUMNS[rel]).get(a.name, UNKNOWN), "unknown"))
            else:
                types.append(TYPE_NAMES.get(self.static_type(a, rel), "unknown"))
        raise SQLError("42883", f"function {f.name}({', '.join(types)}) does not exist",
                       hint="No function matches the given name and argument types. "
                            "You might need to add explicit type casts.")

    def static_type(self, e: Expr, rel: str | None) -> int:
        if isinstance(e, Const):
            return TEXT if e.oid == UNKNOWN else e.oid
        if isinstance(e, ColRef):
            return dict(REL_COLUMNS[rel]).get(e.name, TEXT) if rel else TEXT
        if isinstance(e, Cast):
            return CAST_TYPES.get(e.typename, TEXT)
        if isinstance(e, Func):
            if e.name == "count":
                return INT8
            fd = FUNCS.get(e.name)
            if fd is None:
                return TEXT
            if fd.rettype == UNKNOWN:
                return self.static_type(e.args[0], rel) if e.args else TEXT
            return fd.rettype
        if isinstance(e, (IsNull, InList)):
            return BOOL
        if isinstance(e, Param):
            types = self.bound_types or []
            return types[e.number - 1] if e.number <= len(types) and types[e.number - 1] else TEXT
        if isinstance(e, UnOp):
            return BOOL if e.op == "not" else self.static_type(e.expr, rel)
        if isinstance(e, BinOp):
            if e.op in ("=", "<>", "<", ">", "<=", ">=", "and", "or", "is", "is not"):
                return BOOL
            if e.op == "||":
                return TEXT
            lt, rt = self.static_type(e.left, rel), self.static_type(e.right, rel)
            if NUMERIC in (lt, rt):
                return NUMERIC
            if FLOAT8 in (lt, rt):
                return FLOAT8
            if e.op == "-" and lt == PG_LSN:
                return NUMERIC
            return INT8 if INT8 in (lt, rt) else INT4
        return TEXT

    @staticmethod
    def column_name(item: SelItem) -> str:
        if item.alias:
            return item.alias
        e = item.expr
        while isinstance(e, Cast) and not isinstance(e.expr, (Const,)):
            e = e.expr
        if isinstance(e, ColRef):
            return e.name
        if isinstance(e, Func):
            return e.name
        if isinstance(e, Cast):
            return {"int": "int4", "integer": "int4", "bigint": "int8", "boolean": "bool"}.get(
                e.typename, e.typename)
        return "?column?"

    def select_columns(self, st: Select) -> tuple[str | None, list[tuple[str, int]], list[Expr], bool]:
        """Check a SELECT and name its output: (relation, columns, expressions, is an aggregate)."""
        rel = resolve_relation(st.table) if st.table else None
        for item in st.items:
            if item.expr is None and rel is None:
                raise SQLError("42601", "SELECT * with no tables specified is not valid")
            self._check_columns(item.expr, rel)
        self._check_columns(st.where, rel)
        # output columns
        cols: list[tuple[str, int]] = []
        exprs: list[Expr] = []
        for item in st.items:
            if item.expr is None:
                for name, oid in REL_COLUMNS[rel]:
                    cols.append((name, oid))
                    exprs.append(ColRef(name))
            else:
                cols.append((self.column_name(item), self.static_type(item.expr, rel)))
                exprs.append(item.expr)
        aggregate = any(isinstance(e, Func) and e.name == "count" for e in exprs)
        if aggregate:
            for e in exprs:
                if not (isinstance(e, Func) and e.name == "count") and any(
                        isinstance(x, ColRef) for x in walk(e)):
                    ref = next(x for x in walk(e) if isinstance(x, ColRef))
                    raise SQLError("42803", f'column "{rel}.{ref.name}" must appear in the GROUP BY clause '
                                            "or be used in an aggregate function")
        return rel, cols, exprs, aggregate

    def exec_select(self, st: Select) -> Generator[Wait, None, None]:
        rel, cols, exprs, aggregate = self.select_columns(st)
        # rows of the source
        if rel is None:
            src_rows: list[dict[str, Value]] = [{}]
        elif rel == "kv":
            if aggregate and st.where is None and all(
                    isinstance(e, Func) and e.name == "count" and e.star for e in exprs):
                n = self.kv_count()
                self.result_columns(cols)
                self.result_row([(n, INT8)] * len(exprs))
                self.complete("SELECT 1")
                return
            key = _key_equality(st.where)
            if key is not None:
                found, value = self.kv_lookup(key)
                pairs = [(key, value)] if found else []
            else:
                pairs = self.kv_rows()
            src_rows = [{"key": (k, TEXT), "value": (v, TEXT)} for k, v in pairs]
        else:
            raw = stat_replication_rows(self.engine.shared) if rel == "pg_stat_replication" \
                else roles.view_rows(self, rel) if rel in roles.VIEW_COLUMNS \
                else stat_wal_receiver_rows(self.engine.shared)
            names = [c for c, _ in REL_COLUMNS[rel]]
            src_rows = [dict(zip(names, r)) for r in raw]
        if st.where is not None:
            src_rows = [r for r in src_rows if self._truthy(self.eval(st.where, r))]
        if aggregate:
            out_rows = [[self._aggregate(e, src_rows) for e in exprs]]
        else:
            if st.order:
                src_rows = self._sorted(src_rows, st.order, exprs)
            off = as_int(self.eval(st.offset, None)) if st.offset is not None else 0
            lim = as_int(self.eval(st.limit, None)) if st.limit is not None else None
            if off:
                src_rows = src_rows[off:]
            if lim is not None:
                src_rows = src_rows[:lim]
            out_rows = []
            for r in src_rows:
                vals = []
                for e in exprs:
                    if rel is None and isinstance(e, Func) and e.name in FUNCS and FUNCS[e.name].blocking:
                        fd = FUNCS[e.name]
                        self._check_arity(e, fd)
                        args = [self.eval(a, r) for a in e.args]
                        v = yield from fd.impl(self, args)
                    else:
                        v = self.eval(e, r)
                    vals.append(v)
                out_rows.append(vals)
        self.result_columns(cols)
        for vals in out_rows:
            self.result_row(vals)
        self.complete(f"SELECT {len(out_rows)}")

    def _aggregate(self, e: Expr, rows: list[dict[str, Value]]) -> Value:
        if isinstance(e, Func) and e.name == "count":
            if e.star or not e.args:
                return (len(rows), INT8)
            return (sum(1 for r in rows if self.eval(e.args[0], r)[0] is not None), INT8)
        return self.eval(e, rows[0] if rows else {})

    def _sorted(self, rows: list[dict[str, Value]], order: list[tuple[Expr, bool]],
                exprs: list[Expr]) -> list[dict[str, Value]]:
        for e, desc in reversed(order):
            if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
                if not 1 <= e.value <= len(exprs):
                    raise SQLError("42P10", f"ORDER BY position {e.value} is not in select list")
                e = exprs[e.value - 1]

            def sort_key(r: dict[str, Value], e: Expr = e) -> tuple:
                v = self.eval(e, r)[0]
                # NULLs sort last ascending, first descending (PostgreSQL's default)
                return (v is None, v if v is not None else 0) if not isinstance(v, str) else (False, v)
            try:
                rows = sorted(rows, key=sort_key, reverse=desc)
            except TypeError:
                rows = sorted(rows, key=lambda r, e=e: str(self.eval(e, r)[0]), reverse=desc)
        return rows

    # -- expression evaluation
    @staticmethod
    def _truthy(v: Value) -> bool:
        return v[0] is True or (v[1] != BOOL and v[0] is not None and as_bool(v) is True)

    def _check_arity(self, e: Func, fd: FuncDef) -> None:
        lo, hi = fd.nargs
        if not lo <= len(e.args) <= hi or e.star:
            self._unknown_function(e, None)

    def eval(self, e: Expr, row: dict[str, Value] | None) -> Value:
        if isinstance(e, Const):
            return (e.value, e.oid)
        if isinstance(e, ColRef):
            if row is None or e.name not in row:
                full = f"{e.qual}.{e.name}" if e.qual else e.name
                raise SQLError("42703", f'column "{full}" does not exist')
            return row[e.name]
        if isinstance(e, Cast):
            return cast(self.eval(e.expr, row), e.typename)
        if isinstance(e, Func):
            if e.name == "count":
                raise SQLError("42803", "aggregate functions are not allowed here")
            fd = FUNCS.get(e.name)
            if fd is None:
                self._unknown_function(e, None)
            self._check_arity(e, fd)
            if fd.blocking:
                raise SQLError("0A000", f"{e.name}() can only be called at the top level of a SELECT list")
            return fd.impl(self, [self.eval(a, row) for a in e.args])
        if isinstance(e, IsNull):
            isnull = self.eval(e.expr, row)[0] is None
            return (isnull != e.negated, BOOL)
        if isinstance(e, UnOp):
            v = self.eval(e.expr, row)
            if e.op == "not":
                b = as_bool(v)
                return (None if b is None else not b, BOOL)
            if v[0] is None:
                return v
            if v[1] == NUMERIC:
                return ("-" + v[0] if not str(v[0]).startswith("-") else str(v[0])[1:], NUMERIC)
            return (-as_int(v), v[1] if v[1] in (INT4, INT8) else INT4)
        if isinstance(e, BinOp):
            return self._binop(e, row)
        if isinstance(e, Param):
            return self.param_value(e.number)
        if isinstance(e, InList):
            return self._in_list(e, row)
        raise SQLError("0A000", "unsupported expression")  # pragma: no cover

    def param_value(self, n: int) -> Value:
        if self.bound is None or n > len(self.bound):
            raise SQLError("42P02", f"there is no parameter ${n}")
        return self.bound[n - 1]

    def _in_list(self, e: InList, row: dict[str, Value] | None) -> Value:
        """PostgreSQL's IN: true on a match, else NULL if anything compared was NULL, else false."""
        left = Const(*self.eval(e.expr, row))
        saw_null = left.value is None
        for item in e.items:
            hit = self._binop(BinOp("=", left, item), row)[0]
            if hit:
                return (not e.negated, BOOL)
            saw_null |= hit is None
        return (None, BOOL) if saw_null else (e.negated, BOOL)

    def _binop(self, e: BinOp, row: dict[str, Value] | None) -> Value:
        op = e.op
        if op in ("and", "or"):
            a = as_bool(self.eval(e.left, row))
            if op == "and" and a is False:
                return (False, BOOL)
            if op == "or" and a is True:
                return (True, BOOL)
            b = as_bool(self.eval(e.right, row))
            if op == "and":
                return (False, BOOL) if b is False else ((None, BOOL) if None in (a, b) else (True, BOOL))
            return (True, BOOL) if b is True else ((None, BOOL) if None in (a, b) else (False, BOOL))
        a, b = self.eval(e.left, row), self.eval(e.right, row)
        if op in ("is", "is not"):
            same = a[0] is not None and as_bool(a) == b[0]
            return (same if op == "is" else not same, BOOL)
        if a[0] is None or b[0] is None:
            return (None, BOOL if op in ("=", "<>", "<", ">", "<=", ">=") else TEXT)
        if op == "||":
            return ((as_text(a) or "") + (as_text(b) or ""), TEXT)
        if op in ("=", "<>", "<", ">", "<=", ">="):
            x, y = _comparable(a, b)
            res = {"=": x == y, "<>": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
            return (res, BOOL)
        # arithmetic
        if a[1] == PG_LSN or b[1] == PG_LSN:
            if op == "-" and a[1] == PG_LSN and b[1] in (PG_LSN, UNKNOWN):
                return (str(as_lsn(a) - as_lsn(b)), NUMERIC)
            raise SQLError("42883", f"operator does not exist: {type_name(a)} {op} {type_name(b)}")
        if NUMERIC in (a[1], b[1]) or FLOAT8 in (a[1], b[1]):
            x, y = float(a[0]), float(b[0])
            if op in ("/", "%") and y == 0:
                raise SQLError("22012", "division by zero")
            r = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else 0, "%": x % y if y else 0}[op]
            return (repr(r), NUMERIC) if FLOAT8 not in (a[1], b[1]) else (r, FLOAT8)
        x, y = as_int(a), as_int(b)
        if op in ("/", "%") and y == 0:
            raise SQLError("22012", "division by zero")
        if op == "/":
            r = abs(x) // abs(y) * (1 if (x >= 0) == (y >= 0) else -1)
        elif op == "%":
            r = abs(x) % abs(y) * (1 if x >= 0 else -1)
        else:
            r = {"+": x + y, "-": x - y, "*": x * y}[op]
        oid = INT8 if INT8 in (a[1], b[1]) else INT4
        if oid == INT4 and not -2 ** 31 <= r < 2 ** 31:
            raise SQLError("22003", "integer out of range")
        return (r, oid)


def _comparable(a: Value, b: Value) -> tuple[Any, Any]:
    """Comparison operands: numbers as numbers, LSNs as LSNs, everything else as text."""
    numeric = (INT4, INT8, NUMERIC, FLOAT8, OID, XID)
    if a[1] in numeric and b[1] in numeric:
        return float(a[0]) if a[1] in (NUMERIC, FLOAT8) else a[0], \
            float(b[0]) if b[1] in (NUMERIC, FLOAT8) else b[0]
    if PG_LSN in (a[1], b[1]):
        return as_lsn(a), as_lsn(b)
    if BOOL in (a[1], b[1]):
        return as_bool(a), as_bool(b)
    if TIMESTAMPTZ in (a[1], b[1]) or INTERVAL in (a[1], b[1]):
        if a[1] == b[1]:
            return a[0], b[0]
    return as_text(a), as_text(b)


def walk(e: Expr | None) -> Iterable[Expr]:
    """Every node of an expression, parent first; iterative (expressions may nest thousands deep)."""
    stack = [e] if e is not None else []
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, Func):
            stack.extend(reversed(e.args))
        elif isinstance(e, BinOp):
            stack.append(e.right)
            stack.append(e.left)
        elif isinstance(e, InList):
            stack.extend(reversed(e.items))
            stack.append(e.expr)
        elif isinstance(e, (Cast, UnOp, IsNull)):
            stack.append(e.expr)


def _key_equality(where: Expr | None) -> str | None:
    """The key of ``WHERE key = <constant>`` (either side), for a point lookup."""
    if not isinstance(where, BinOp) or where.op != "=":
        return None
    for col, other in ((where.left, where.right), (where.right, where.left)):
        if isinstance(col, ColRef) and col.name == "key" and isinstance(other, Const) and other.value is not None:
            if isinstance(other.value, bool):
                return None
            return as_text((other.value, other.oid))
        if isinstance(col, ColRef) and col.name == "key" and isinstance(other, Cast) and \
                isinstance(other.expr, Const) and other.typename in ("text", "varchar"):
            return as_text((other.expr.value, other.expr.oid))
    return None


def _format_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"

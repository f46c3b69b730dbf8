"""The SQL surface: the executor for table ``kv`` (statements parsed by backend/parse.py).

What it owns: the execution of the statements walswitch accepts (DESIGN.md §6),
their PostgreSQL command tags and error codes, the per-session transaction
state machine (idle / in block / failed, plus PostgreSQL's implicit block for
a multi-statement Query).  Beside it: backend/parse.py (SQL text -> statements),
backend/extended.py (the extended query protocol), backend/evaluate.py (expressions),
backend/functions.py (SQL functions and the system views), backend/values.py (values
and casts), backend/waits.py (what a statement yields to the backend loop).

A long statement pauses (``Session.pause``, every PAUSE_EVERY of work in its row loops)
so the loop serves the other sessions and a cancel or statement_timeout lands while it
runs; ``check_interrupts`` is its CHECK_FOR_INTERRUPTS (the connection supplies it).

What it does not own: WAL and durability.  The executor talks to an
``Engine`` (the backend process, or a stand-in in unit tests): it asks the
engine to log each change (a KV record), to log a commit (returns a
``CommitWait`` the session yields; the backend resumes the session once the
commit is flushed and applied: group commit), or an abort.

A Query message runs as a generator (``Session.run``): it writes protocol
messages into ``Session.out`` (results through ``result_columns``/``result_row``/
``complete``, which a portal captures) and yields a ``Wait`` whenever it must not go
on before something happens elsewhere (a commit's fsync, a promotion).  The
whole query string is parsed before anything runs, as PostgreSQL does: a
syntax error anywhere means no statement of the string executes.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from backend import activity, roles
from backend.evaluate import Evaluator, _key_equality, walk  # noqa: F401 - walk re-exported
from backend.functions import (
    FUNCS, REL_COLUMNS, resolve_relation, stat_replication_rows, stat_wal_receiver_rows
)
from backend.nodes import (
    BOOL, CAST_TYPES, FLOAT8, INET, INT4, INT8, INTERVAL, NAME, NUMERIC, PG_LSN, SERVER_VERSION, TEXT, TYPE_NAMES,
    UNKNOWN, Begin, BinOp, Cast, Checkpoint, ColRef, Commit, Const, Delete, Expr, Func, InList, Insert, IsNull, Param,
    RoleStmt, Rollback, Select, SelItem, SetStmt, Show, Stmt, UnOp, Update, Value
)
from backend.parse import parse
from backend.values import as_int, as_text, to_text
from backend.waits import CommitWait, Panic, Until, Wait  # noqa: F401 - Panic and Until re-exported for callers
from libpq import protocol as P
from libpq import scram
from libpq.protocol import SQLError
from utils.config import READ_ONLY, SETTINGS

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

    def request_logrotate(self) -> None:
        raise NotImplementedError

    def activity(self) -> "list[activity.Activity]":
        """The sessions and walsenders for pg_stat_activity."""
        return []

    def signal_backend(self, pid: int, terminate: bool) -> None:
        """Cancel the running statement of (or terminate) the session or walsender ``pid``."""
        raise NotImplementedError

    def offload(self, fn: Callable[[], Any]) -> Generator[Wait, None, Any]:
        """Run ``fn`` (C code that releases the GIL) without holding up other sessions; the backend
        runs it in a thread and waits (cancellably).  Here, with no loop to keep going: inline."""
        return fn()
        yield  # pragma: no cover - makes this a generator

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

# Work a statement does between two pauses (the added latency one long statement can cause the others).
PAUSE_EVERY = 0.01


def _due() -> bool:
    return True


SHOW_ALL_COLUMNS = [("name", TEXT), ("setting", TEXT), ("description", TEXT)]

class Session(Evaluator):
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
        # pg_stat_activity: the statement running or last run, and when (µs since the epoch)
        self.query = ""
        self.query_start_us: int | None = None
        self.state_change_us: int | None = None
        self.xact_start_us: int | None = None
        self.pause_at = float("inf")     # monotonic time of the running statement's next pause()
        self.verifier_cache: dict[str, str] = {}    # password -> SCRAM secret made off the loop (roles.py)

    def pause(self) -> Generator[Wait, None, None]:
        """A long statement's breath: check for interrupts, then yield to the backend's loop (an
        ``Until`` already due) so that the other sessions' messages and commits go on meanwhile; a
        CancelRequest or statement_timeout is thrown in here.  Callers check ``pause_at`` first."""
        self.check_interrupts()
        yield Until(_due, 0.0)
        self.pause_at = time.monotonic() + PAUSE_EVERY

    def check_interrupts(self) -> None:
        """CHECK_FOR_INTERRUPTS: the connection replaces this with its own (raises 57014, or
        waits.Terminate); the executor calls it before results go out and between statements."""

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
        self.note_query(sql)
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
                    self.check_interrupts()
                    if not self.block and not self._implicit:
                        yield from self._commit()
                except SQLError as e:
                    self._fail(e)
                    return
            if not self.block:
                yield from self._commit()
        finally:
            self._implicit = False

    def note_query(self, sql: str) -> None:
        """A statement starts (pg_stat_activity's query, query_start, xact_start)."""
        now = time.time_ns() // 1000
        # track_activity_query_size (1024): the first 1023 bytes, as PostgreSQL keeps them
        self.query = sql if len(sql) < 256 else sql.encode()[:1023].decode(errors="ignore")
        self.query_start_us = self.state_change_us = now
        self.pause_at = time.monotonic() + PAUSE_EVERY
        if not self.block:
            self.xact_start_us = now

    def _fail(self, e: SQLError) -> None:
        self.send(e.encode())
        if self.block:
            self.failed = True
        self._abort()

    def execute(self, st: Stmt) -> Generator[Wait, None, None]:
        if isinstance(st, Select):
            yield from self.exec_select(st)
        elif isinstance(st, Insert):
            yield from self.exec_insert(st)
        elif isinstance(st, Delete):
            yield from self.exec_delete(st)
        elif isinstance(st, Update):
            yield from self.exec_update(st)
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
            plain = roles.passwords_to_hash(self, st.text)
            if plain:
                self.verifier_cache = yield from self.engine.offload(
                    lambda: {p: scram.make_verifier(p).encode() for p in plain})
            try:
                self.complete(roles.run_role_sql(self, st.text))
            finally:
                self.verifier_cache = {}
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
            "data_directory": eng.datadir, "data_directory_mode": _directory_mode(eng.datadir), "lc_messages": "C", "lc_collate": "C", "lc_ctype": "C",
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

    def exec_insert(self, st: Insert) -> Generator[Wait, None, None]:
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
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
        txn = self._check_writable("INSERT")
        n = 0
        for key, value in rows:
            if st.on_conflict == "nothing" and self.kv_lookup(key)[0]:
                continue
            self._write(txn, "put", key, value)
            n += 1
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
        self.complete(f"INSERT 0 {n}")

    def _matching_keys(self, where: Expr | None) -> Generator[Wait, None, list[tuple[str, str | None]]]:
        key = _key_equality(where)
        if key is not None:
            found, value = self.kv_lookup(key)
            return [(key, value)] if found else []
        out = []
        for k, v in self.kv_rows():
            if where is None or self._truthy(self.eval(where, {"key": (k, TEXT), "value": (v, TEXT)})):
                out.append((k, v))
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
        return out

    def exec_delete(self, st: Delete) -> Generator[Wait, None, None]:
        rel = resolve_relation(st.table)
        if rel != "kv":
            raise SQLError("42809", f'cannot delete from view "{rel}"')
        self._check_columns(st.where, "kv")
        matched = yield from self._matching_keys(st.where)
        txn = self._check_writable("DELETE")
        for k, _v in matched:
            self._write(txn, "delete", k, None)
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
        self.complete(f"DELETE {len(matched)}")

    def exec_update(self, st: Update) -> Generator[Wait, None, None]:
        rel = resolve_relation(st.table)
        if rel != "kv":
            raise SQLError("55000", f'cannot update view "{rel}"')
        for col, _e in st.sets:
            if col not in ("key", "value"):
                raise SQLError("42703", f'column "{col}" of relation "kv" does not exist')
        self._check_columns(st.where, "kv")
        matched = yield from self._matching_keys(st.where)
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
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
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
                else activity.view_rows(self, self.engine.activity()) if rel == "pg_stat_activity" \
                else stat_wal_receiver_rows(self.engine.shared)
            names = [c for c, _ in REL_COLUMNS[rel]]
            src_rows = [dict(zip(names, r)) for r in raw]
        if st.where is not None:
            kept = []
            for r in src_rows:
                if self._truthy(self.eval(st.where, r)):
                    kept.append(r)
                if time.monotonic() >= self.pause_at:
                    yield from self.pause()
            src_rows = kept
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
                if time.monotonic() >= self.pause_at:
                    yield from self.pause()
        self.check_interrupts()       # a cancel or terminate that this very statement sent lands here
        self.result_columns(cols)
        for vals in out_rows:
            self.result_row(vals)
            if time.monotonic() >= self.pause_at:
                yield from self.pause()
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


def _directory_mode(path: str) -> str | None:
    """SHOW data_directory_mode: the data directory's permission bits as PostgreSQL prints them (0700)."""
    if not path:
        return None
    try:
        return f"{os.stat(path).st_mode & 0o777:04o}"
    except OSError:
        return None


def _format_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"

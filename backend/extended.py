"""The extended query protocol of one session, as PostgreSQL's tcop/postgres.c speaks it.

Objects: prepared statements (``Prepared``: Parse's query, parsed once by pglast, with its parameter
types) and portals (``Portal``: a statement bound to parameter values and result formats, plus the
rows not yet fetched when an Execute with a row limit stopped early).

Rules kept from PostgreSQL:
- the unnamed statement and the unnamed portal are replaced by the next Parse / Bind; a named one
  must be Closed first (42P05 / 42P03); a simple Query destroys the unnamed statement;
- a Parse of several statements: 42601 "cannot insert multiple commands into a prepared statement";
- unknown statement 26000, unknown portal 34000;
- an error makes the connection skip every message up to the next Sync (``skipping``); Sync answers
  ReadyForQuery and ends the transaction's portals when no block is open;
- an Execute outside a transaction block commits when its portal completes (as finish_xact_command).

Who drives it: backend/session.py's Connection calls ``extended_message`` for P/B/D/E/C/S/H and
runs the generator it returns exactly like a Query's (it yields a CommitWait while a commit is
flushed).  The executor (``backend/sql.py``'s Session, which mixes this class in) provides
``execute``, ``result_columns``, ``cast_param``, ``_fail`` and ``_commit``.
"""
from __future__ import annotations

import struct
from collections.abc import Generator
from decimal import Decimal, InvalidOperation
from dataclasses import dataclass
from typing import Any

from backend.nodes import (BOOL, CAST_TYPES, FLOAT8, INT4, INT8, INTERVAL, NAME, NUMERIC, OID, PG_LSN, TEXT,
                           TIMESTAMPTZ, UNKNOWN,
                           XID, Cast, Param, Select, Show, Stmt, Value)
from backend.parse import parse, stack_depth_error
from libpq import protocol as P
from libpq.protocol import ProtocolError, SQLError

INT2, FLOAT4, BPCHAR, VARCHAR = 21, 700, 1042, 1043
_TEXTUAL = {0, UNKNOWN, TEXT, NAME, BPCHAR, VARCHAR}
_PG_EPOCH_US = 946_684_800 * 1_000_000          # 2000-01-01 in Unix microseconds
# declared parameter type -> the cast our executor applies to a text value
_CAST_OF = {INT2: "int4", INT4: "int4", INT8: "int8", BOOL: "bool", FLOAT8: "float8", FLOAT4: "float8",
            1700: "numeric", PG_LSN: "pg_lsn", OID: "oid", XID: "xid", INTERVAL: "interval"}


@dataclass
class Prepared:
    query: str
    stmt: Stmt | None                    # None: empty query
    param_types: list[int]               # declared (0 = let the server decide)


@dataclass
class Portal:
    prepared: Prepared
    params: list[Value]
    result_formats: list[int]
    cols: list[tuple[str, int]] | None = None
    rows: list[list[Value]] | None = None   # computed, not yet sent (None: not run yet)
    command: str = "SELECT"                 # "SELECT" (tag counts rows) or "SHOW"
    done: bool = False

    def tag(self, n: int) -> str:
        return "SHOW" if self.command == "SHOW" else f"SELECT {n}"


def param_types(stmt: Stmt | None, declared: list[int]) -> list[int]:
    """One type per $n up to the highest used (or declared), as PostgreSQL counts them; an undeclared
    ``$n::type`` takes that type (its inference for casts), any other stays 0 (described as text)."""
    top = len(declared)
    inferred: dict[int, int] = {}
    todo: list[Any] = [stmt] if stmt is not None else []
    while todo:                            # iterative walk: no recursion on deep trees
        x = todo.pop()
        if isinstance(x, Param):
            top = max(top, x.number)
        elif isinstance(x, Cast) and isinstance(x.expr, Param):
            inferred.setdefault(x.expr.number, CAST_TYPES.get(x.typename, 0))
            todo.append(x.expr)
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
        elif hasattr(x, "__dataclass_fields__"):
            todo.extend(getattr(x, f) for f in x.__dataclass_fields__)
    types = list(declared) + [0] * (top - len(declared))
    return [t or inferred.get(i + 1, 0) for i, t in enumerate(types)]


def formats_for(codes: list[int], n: int) -> list[int]:
    """Format codes as Bind gives them: none = all text, one = all that, else one per column."""
    if not codes:
        return [0] * n
    if len(codes) == 1:
        return codes * n
    if len(codes) != n:
        raise SQLError("08P01", f"bind message has {len(codes)} result formats but query has {n} columns")
    return codes


def decode_param(raw: bytes | None, fmt: int, oid: int) -> tuple[Any, int, str | None]:
    """A Bind value → (python value, oid, cast to apply or None)."""
    if raw is None:
        return None, (oid if oid not in (0,) else UNKNOWN), None
    if fmt == 0:
        text = raw.decode("utf-8", "replace")
        if oid in _TEXTUAL:
            return text, (UNKNOWN if oid in (0, UNKNOWN) else TEXT), None
        return text, UNKNOWN, _CAST_OF.get(oid)
    if fmt != 1:
        raise SQLError("08P01", f"unsupported format code: {fmt}")
    try:
        if oid in _TEXTUAL:
            return raw.decode("utf-8"), (UNKNOWN if oid in (0, UNKNOWN) else TEXT), None
        if oid == INT2:
            return struct.unpack("!h", raw)[0], INT4, None
        if oid == INT4:
            return struct.unpack("!i", raw)[0], INT4, None
        if oid == INT8:
            return struct.unpack("!q", raw)[0], INT8, None
        if oid == BOOL:
            return struct.unpack("!?", raw)[0], BOOL, None
        if oid == FLOAT8:
            return struct.unpack("!d", raw)[0], FLOAT8, None
        if oid == FLOAT4:
            return struct.unpack("!f", raw)[0], FLOAT8, None
        if oid in (OID, XID):
            return struct.unpack("!I", raw)[0], oid, None
        if oid == PG_LSN:
            return struct.unpack("!Q", raw)[0], PG_LSN, None
        if oid == NUMERIC:
            return numeric_recv(raw), NUMERIC, None
    except (struct.error, UnicodeDecodeError, InvalidOperation):
        raise SQLError("22P03", "incorrect binary data format in bind parameter") from None
    raise SQLError("0A000", f"binary format for parameters of type {oid} is not supported")


def encode_binary(v: Value) -> bytes | None:
    """A result value in PostgreSQL's binary send format for its type."""
    val, oid = v
    if val is None:
        return None
    if oid == INT4:
        return struct.pack("!i", val)
    if oid == INT8:
        return struct.pack("!q", val)
    if oid == BOOL:
        return b"\x01" if val else b"\x00"
    if oid == FLOAT8:
        return struct.pack("!d", val)
    if oid in (OID, XID):
        return struct.pack("!I", val)
    if oid == PG_LSN:
        return struct.pack("!Q", val)
    if oid == TIMESTAMPTZ:
        return struct.pack("!q", val - _PG_EPOCH_US)
    if oid == INTERVAL:
        return struct.pack("!qii", val, 0, 0)
    if oid == NUMERIC:
        return numeric_send(str(val))
    if oid in _TEXTUAL:
        return str(val).encode("utf-8")
    raise SQLError("0A000", f"binary output format for type {oid} is not supported")


def numeric_send(text: str) -> bytes:
    """PostgreSQL's numeric binary format: ndigits, weight, sign, dscale, base-10000 digits."""
    d = Decimal(text)
    if d.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    exp = d.as_tuple().exponent
    dscale = max(0, -exp) if isinstance(exp, int) else 0
    whole, _, frac = format(abs(d), "f").partition(".")
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    frac = frac + "0" * (-len(frac) % 4)
    groups = [int(whole[i:i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(frac[i:i + 4]) for i in range(0, len(frac), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    sign = 0x4000 if d < 0 else 0
    return struct.pack(f"!hhHh{len(groups)}h", len(groups), weight, sign, dscale, *groups)


def numeric_recv(raw: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", raw)
    if sign == 0xC000:
        return "NaN"
    digits = struct.unpack_from(f"!{ndigits}h", raw, 8)
    v = sum((Decimal(g).scaleb(4 * (weight - i)) for i, g in enumerate(digits)), Decimal(0))
    text = format(v.quantize(Decimal(1).scaleb(-dscale)), "f")
    return ("-" + text) if sign == 0x4000 else text


class ExtendedProtocol:
    """Mixed into backend/sql.py's Session: the statements, portals and message handlers."""

    statements: dict[str, Prepared]
    portals: dict[str, Portal]
    skipping: bool                    # after an error: ignore messages up to Sync
    portal: Portal | None             # the portal being executed (rows go to it, not to the wire)

    def init_extended(self) -> None:
        self.statements, self.portals = {}, {}
        self.skipping = False
        self.portal = None

    # -- dispatch
    def extended_message(self, mtype: bytes, body: bytes) -> Generator[Any, None, bool]:
        """Handle one P/B/D/E/C/S/H message; returns True if ReadyForQuery must follow (Sync)."""
        if mtype == b"S":
            self.skipping = False
            if not self.block and self.txn is None and not self.failed:
                self.portals.clear()           # the transaction ended: its portals go
            return True
        if mtype == b"H" or self.skipping:
            return False
        try:
            if mtype == b"P":
                self.on_parse(P.decode_parse(body))
            elif mtype == b"B":
                self.on_bind(P.decode_bind(body))
            elif mtype == b"D":
                self.on_describe(*P.decode_describe(body))
            elif mtype == b"E":
                yield from self.on_execute(*P.decode_execute(body))
            elif mtype == b"C":
                kind, name = P.decode_describe(body)
                (self.statements if kind == "S" else self.portals).pop(name, None)
                self.send(P.close_complete())
        except ProtocolError as e:
            self._fail(SQLError("08P01", str(e)))
            self.skipping = True
        except (SQLError, RecursionError) as e:
            self.portal = None
            self._fail(e if isinstance(e, SQLError) else stack_depth_error())
            self.skipping = True
        return False

    def forget_unnamed_statement(self) -> None:
        """A simple Query destroys the unnamed statement (and portal), as PostgreSQL."""
        self.statements.pop("", None)
        self.portals.pop("", None)

    # -- Parse
    def on_parse(self, m: P.ParseMsg) -> None:
        if m.name and m.name in self.statements:
            raise SQLError("42P05", f'prepared statement "{m.name}" already exists')
        stmts = parse(m.query)
        if len(stmts) > 1:
            raise SQLError("42601", "cannot insert multiple commands into a prepared statement")
        stmt = stmts[0] if stmts else None
        self.statements[m.name] = Prepared(m.query, stmt, param_types(stmt, list(m.param_types)))
        self.send(P.parse_complete())

    def _statement(self, name: str) -> Prepared:
        ps = self.statements.get(name)
        if ps is None:
            raise SQLError("26000", f'prepared statement "{name}" does not exist' if name
                           else "unnamed prepared statement does not exist")
        return ps

    # -- Bind
    def on_bind(self, m: P.BindMsg) -> None:
        ps = self._statement(m.statement)
        if len(m.values) != len(ps.param_types):
            raise SQLError("08P01", f"bind message supplies {len(m.values)} parameters, but prepared statement "
                                    f'"{m.statement}" requires {len(ps.param_types)}')
        if m.portal and m.portal in self.portals:
            raise SQLError("42P03", f'cursor "{m.portal}" already exists')
        if self.failed and not (ps.stmt is not None and ps.stmt.txn_control):
            raise SQLError("25P02", "current transaction is aborted, commands ignored until end of "
                                    "transaction block")
        fmts = formats_for(m.param_formats, len(m.values))
        params: list[Value] = []
        for raw, fmt, oid in zip(m.values, fmts, ps.param_types):
            val, typ, cast_to = decode_param(raw, fmt, oid)
            params.append(self.cast_param((val, typ), cast_to) if cast_to and val is not None else (val, typ))
        self.portals[m.portal] = Portal(ps, params, list(m.result_formats))
        self.send(P.bind_complete())

    # -- Describe
    def _row_shape(self, stmt: Stmt | None, params: list[Value], types: list[int]) -> list[tuple[str, int]] | None:
        if not isinstance(stmt, (Select, Show)):
            return None
        saved = self.bound, self.param_types
        self.bound, self.param_types = params, types
        try:
            return self.result_columns(stmt)
        finally:
            self.bound, self.param_types = saved

    def on_describe(self, kind: str, name: str) -> None:
        if kind == "S":
            ps = self._statement(name)
            types = [t or TEXT for t in ps.param_types]
            self.send(P.parameter_description(types))
            cols = self._row_shape(ps.stmt, [], ps.param_types)
            self.send(P.row_description(cols) if cols is not None else P.no_data())
        elif kind == "P":
            portal = self.portals.get(name)
            if portal is None:
                raise SQLError("34000", f'portal "{name}" does not exist')
            ps = portal.prepared
            cols = self._row_shape(ps.stmt, portal.params, [v[1] for v in portal.params])
            if cols is None:
                self.send(P.no_data())
            else:
                self.send(P.row_description(cols, formats_for(portal.result_formats, len(cols))))
        else:
            raise SQLError("08P01", f"invalid DESCRIBE message subtype {ord(kind[:1] or ' ')}")

    # -- Execute
    def on_execute(self, name: str, max_rows: int) -> Generator[Any, None, None]:
        portal = self.portals.get(name)
        if portal is None:
            raise SQLError("34000", f'portal "{name}" does not exist')
        st = portal.prepared.stmt
        if st is None:
            self.send(P.empty_query_response())
            return
        if portal.done:                    # fetched to the end already: PostgreSQL answers an empty tag
            self.send(P.command_complete("SELECT 0" if isinstance(st, Select) else ""))
            return
        if portal.rows is None:
            if self.failed and not st.txn_control:
                raise SQLError("25P02", "current transaction is aborted, commands ignored until end of "
                                        "transaction block")
            self.bound, self.param_types = portal.params, [v[1] for v in portal.params]
            self.portal = portal
            try:
                yield from self.execute(st)
            finally:
                self.portal = None
                self.bound, self.param_types = [], []
            if portal.rows is None:            # not a row-returning statement: it ran to completion
                portal.done = True
                if not self.block:
                    yield from self._commit()
                return
        self._send_rows(portal, max_rows)
        if portal.done and not self.block:
            yield from self._commit()

    def _send_rows(self, portal: Portal, max_rows: int) -> None:
        rows = portal.rows or []
        batch = rows if max_rows <= 0 else rows[:max_rows]
        fmts = formats_for(portal.result_formats, len(portal.cols or []))
        for vals in batch:
            self.send(P.data_row([self.to_wire(v) if f == 0 else encode_binary(v) for v, f in zip(vals, fmts)]))
        portal.rows = rows[len(batch):]
        if max_rows > 0 and portal.rows:
            self.send(P.portal_suspended())
            return
        portal.done = True
        self.send(P.command_complete(portal.tag(len(batch))))

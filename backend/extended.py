"""The extended query protocol of one connection: prepared statements, portals, and their messages.

As PostgreSQL's backend speaks it (tcop/postgres.c): Parse makes a prepared statement (named, or the
unnamed one that the next unnamed Parse replaces), Bind makes a portal from it with parameter values
($n, text or binary) and result formats, Describe answers ParameterDescription / RowDescription /
NoData, Execute runs a portal up to a row limit (PortalSuspended, then the rest on the next Execute),
Close drops either, Flush sends what is pending, Sync ends the implicit transaction and answers
ReadyForQuery.  After an error every message up to the next Sync is skipped (session.py counts them
out); the implicit transaction then rolls back.

Who calls it: backend/session.py's Connection, one message at a time.  Execute and Sync return
generators like a simple Query (backend/sql.py ``Session.run``): they may wait for a commit's flush.

Results of an Execute are captured by the session's result hooks (``Session.capture``), kept in the
portal, and sent in the portal's formats; binary forms exist for the types our statements return.
"""
from __future__ import annotations

import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from backend.nodes import (
    BOOL, CAST_TYPES, FLOAT8, INT4, INT8, INTERVAL, NAME, NUMERIC, OID, PG_LSN, TEXT, TIMESTAMPTZ, TYPE_NAMES, UNKNOWN,
    XID, Cast, Expr, Param, SelItem, Stmt, Value
)
from backend.parse import parse
from backend.sql import Session, walk
from backend.values import cast, to_text
from backend.waits import Wait
from libpq import protocol as P
from libpq.protocol import BodyReader, ProtocolError, SQLError
from xlog.lsn import parse_lsn

INT2, FLOAT4, BPCHAR, VARCHAR = 21, 700, 1042, 1043
POSTGRES_EPOCH_US = 946_684_800_000_000
# Parameter types given by the client -> the cast that reads their text form.
_PARAM_CASTS = {INT2: "int4", INT4: "int4", INT8: "int8", BOOL: "bool", FLOAT4: "float8", FLOAT8: "float8",
                NUMERIC: "numeric", PG_LSN: "pg_lsn", OID: "oid", XID: "xid", INTERVAL: "interval"}
_TEXT_LIKE = {0, TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN}


@dataclass
class Prepared:
    text: str
    stmt: Stmt | None            # None: an empty query string
    param_types: list[int]       # as given (0: not given); resolved types go in ParameterDescription


@dataclass
class Capture:
    """What an Execute produced, before it is sent."""
    columns: list[tuple[str, int]] | None = None
    rows: list[list[Value]] = field(default_factory=list)
    tag: str | None = None


@dataclass
class Portal:
    prepared: Prepared
    params: list[Value]
    formats: list[int]           # result format per column (filled on first Describe/Execute)
    format_codes: list[int]      # as Bind gave them
    result: Capture | None = None
    sent: int = 0                # rows already sent


class Extended:
    def __init__(self, session: Session):
        self.session = session
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}

    # ---------------------------------------------------------------- dispatch
    def handle(self, mtype: bytes, body: bytes) -> Generator[Wait, None, None] | None:
        """Handle one message; output goes to ``session.out``.  Raises SQLError for an ErrorResponse."""
        try:
            r = BodyReader(body)
            if mtype == b"P":
                return self.parse(r)
            if mtype == b"B":
                return self.bind(r)
            if mtype == b"D":
                return self.describe(r)
            if mtype == b"E":
                return self.execute(r)
            if mtype == b"C":
                return self.close(r)
            if mtype == b"S":
                return self.sync()
            return None          # H (Flush): the connection sends what is pending anyway
        except ProtocolError as e:
            raise SQLError("08P01", str(e)) from None

    # ---------------------------------------------------------------- Parse
    def parse(self, r: BodyReader) -> None:
        name, text = r.cstr(), r.cstr()
        types = [r.uint32() for _ in range(r.int16())]
        r.end()
        if name and name in self.statements:
            raise SQLError("42P05", f'prepared statement "{name}" already exists')
        stmts = parse(text)
        if len(stmts) > 1:
            raise SQLError("42601", "cannot insert multiple commands into a prepared statement")
        st = stmts[0] if stmts else None
        for t in types:
            if t and t not in TYPE_NAMES and t not in (INT2, FLOAT4, BPCHAR, VARCHAR):
                raise SQLError("42704", f"type with OID {t} does not exist")
        n = max((e.number for e in _params(st)), default=0)
        types = types + [0] * (n - len(types))
        inferred = _cast_types(st)          # an undeclared $n::type takes that type, as PostgreSQL infers it
        types = [t or inferred.get(i + 1, 0) for i, t in enumerate(types)]
        self.statements[name] = Prepared(text, st, types)
        self.session.send(P.parse_complete())

    # ---------------------------------------------------------------- Bind
    def bind(self, r: BodyReader) -> None:
        portal_name, stmt_name = r.cstr(), r.cstr()
        codes = [r.int16() for _ in range(r.int16())]
        raw: list[bytes | None] = []
        for _ in range(r.int16()):
            n = r.int32()
            raw.append(None if n == -1 else r.raw(n))
        result_codes = [r.int16() for _ in range(r.int16())]
        r.end()
        prep = self._statement(stmt_name)
        if len(raw) != len(prep.param_types):
            raise SQLError("08P01", f"bind message supplies {len(raw)} parameters, but prepared statement "
                                    f'"{stmt_name}" requires {len(prep.param_types)}')
        if len(codes) not in (0, 1, len(raw)):
            raise SQLError("08P01", f"bind message has {len(codes)} parameter formats but {len(raw)} parameters")
        if portal_name and portal_name in self.portals:
            raise SQLError("42P03", f'cursor "{portal_name}" already exists')
        params = [self._param(i, v, prep.param_types[i], codes[i] if len(codes) > 1 else codes[0] if codes else 0)
                  for i, v in enumerate(raw)]
        self.portals[portal_name] = Portal(prep, params, [], result_codes)
        self.session.send(P.bind_complete())

    def _param(self, i: int, raw: bytes | None, typ: int, fmt: int) -> Value:
        if raw is None:
            return (None, typ if typ and typ not in _TEXT_LIKE else UNKNOWN)
        if fmt == 1:
            return _decode_binary(i + 1, raw, typ)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SQLError("22021", 'invalid byte sequence for encoding "UTF8"') from None
        if typ in _TEXT_LIKE:
            return (text, UNKNOWN)       # as an untyped literal: the statement's context decides
        if typ in _PARAM_CASTS:
            return cast((text, UNKNOWN), _PARAM_CASTS[typ])
        return (text, UNKNOWN)

    # ---------------------------------------------------------------- Describe
    def describe(self, r: BodyReader) -> None:
        kind, name = r.byte(), r.cstr()
        r.end()
        s = self.session
        if kind == b"S":
            prep = self._statement(name)
            s.send(P.parameter_description([t if t else TEXT for t in prep.param_types]))
            cols = self._columns(prep, [])
            s.send(P.row_description(cols) if cols is not None else P.no_data())
        elif kind == b"P":
            portal = self._portal(name)
            cols = self._columns(portal.prepared, portal.params)
            if cols is None:
                s.send(P.no_data())
            else:
                portal.formats = self._formats(portal.format_codes, len(cols))
                s.send(P.row_description(cols, portal.formats))
        else:
            raise SQLError("08P01", f"invalid DESCRIBE message subtype {kind[0]}")

    def _columns(self, prep: Prepared, params: list[Value]) -> list[tuple[str, int]] | None:
        s = self.session
        s.bound, s.bound_types = params, prep.param_types
        try:
            return s.describe(prep.stmt)
        finally:
            s.bound = s.bound_types = None

    @staticmethod
    def _formats(codes: list[int], n: int) -> list[int]:
        if len(codes) not in (0, 1, n):
            raise SQLError("08P01", f"bind message has {len(codes)} result formats but query has {n} columns")
        if any(c not in (0, 1) for c in codes):
            raise SQLError("22023", f"unsupported format code: {next(c for c in codes if c not in (0, 1))}")
        return [codes[i] if len(codes) > 1 else codes[0] if codes else 0 for i in range(n)]

    # ---------------------------------------------------------------- Execute
    def execute(self, r: BodyReader) -> Generator[Wait, None, None]:
        name, limit = r.cstr(), r.int32()
        r.end()
        portal = self._portal(name)
        return self._run(portal, limit if limit > 0 else 0)

    def _run(self, portal: Portal, limit: int) -> Generator[Wait, None, None]:
        s = self.session
        st = portal.prepared.stmt
        if st is None:
            s.send(P.empty_query_response())
            return
        if portal.result is None:
            if s.failed and not st.txn_control:
                raise SQLError("25P02", "current transaction is aborted, commands ignored until end of "
                                        "transaction block")
            s.note_query(portal.prepared.text)
            s.capture = portal.result = Capture()
            s.bound, s.bound_types = portal.params, portal.prepared.param_types
            s._implicit = True       # the implicit transaction lasts until Sync
            try:
                yield from s.execute(st)
            finally:
                s.capture = s.bound = s.bound_types = None
            if not portal.formats and portal.result.columns is not None:
                portal.formats = self._formats(portal.format_codes, len(portal.result.columns))
        res = portal.result
        start = portal.sent
        end = len(res.rows) if not limit else min(len(res.rows), portal.sent + limit)
        cols = res.columns or []
        for row in res.rows[portal.sent:end]:
            s.send(P.data_row([_encode(v, cols[i][1], portal.formats[i]) for i, v in enumerate(row)]))
        portal.sent = end
        if limit and end < len(res.rows):
            s.send(P.portal_suspended())
        elif res.tag is not None:
            # PostgreSQL counts the rows of this Execute (after a PortalSuspended: the rest only)
            tag = f"SELECT {end - start}" if res.columns is not None and res.tag.startswith("SELECT ") else res.tag
            s.send(P.command_complete(tag))

    # ---------------------------------------------------------------- Close, Sync
    def close(self, r: BodyReader) -> None:
        kind, name = r.byte(), r.cstr()
        r.end()
        if kind == b"S":
            self.statements.pop(name, None)
        elif kind == b"P":
            self.portals.pop(name, None)
        else:
            raise SQLError("08P01", f"invalid CLOSE message subtype {kind[0]}")
        self.session.send(P.close_complete())

    def sync(self) -> Generator[Wait, None, None]:
        """End of an extended-protocol batch: commit the implicit transaction; the unnamed portal goes."""
        s = self.session
        self.portals.pop("", None)
        s._implicit = False
        if not s.block and not s.failed:
            yield from s._commit()

    def after_error(self) -> None:
        """An error skips to Sync; the implicit transaction is already rolled back by the session."""
        self.session._implicit = False
        self.portals.pop("", None)

    # ---------------------------------------------------------------- lookups
    def _statement(self, name: str) -> Prepared:
        prep = self.statements.get(name)
        if prep is None:
            raise SQLError("26000", f'prepared statement "{name}" does not exist' if name
                           else "unnamed prepared statement does not exist")
        return prep

    def _portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise SQLError("34000", f'portal "{name}" does not exist')
        return portal


def _params(st: Stmt | None) -> list[Param]:
    """Every $n of a statement (its expressions, wherever they stand)."""
    out: list[Param] = []
    if st is None:
        return out
    for value in vars(st).values():
        for root in _expressions(value):
            out.extend(e for e in walk(root) if isinstance(e, Param))
    return out


def _cast_types(st: Stmt | None) -> dict[int, int]:
    """$n -> the type of a cast applied directly to it ($1::int), for parameters the client left open."""
    out: dict[int, int] = {}
    if st is None:
        return out
    for value in vars(st).values():
        for root in _expressions(value):
            for e in walk(root):
                if isinstance(e, Cast) and isinstance(e.expr, Param):
                    out.setdefault(e.expr.number, CAST_TYPES.get(e.typename, 0))
    return out


def _expressions(value: Any) -> list[Any]:
    """The expressions inside a statement field (lists of rows, (name, expr) pairs, select items)."""
    stack, found = [value], []
    while stack:
        v = stack.pop()
        if isinstance(v, Expr):
            found.append(v)
        elif isinstance(v, SelItem):
            stack.append(v.expr)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return found


def _decode_binary(n: int, raw: bytes, typ: int) -> Value:
    fmt = {INT2: "!h", INT4: "!i", INT8: "!q", FLOAT4: "!f", FLOAT8: "!d", OID: "!I", XID: "!I",
           PG_LSN: "!Q"}.get(typ)
    try:
        if fmt is not None:
            (v,) = struct.unpack(fmt, raw)
            return (v, {INT2: INT4, FLOAT4: FLOAT8}.get(typ, typ))
        if typ == BOOL:
            if len(raw) != 1:
                raise struct.error
            return (raw != b"\x00", BOOL)
        if typ in _TEXT_LIKE:
            return (raw.decode("utf-8"), UNKNOWN)
        if typ == NUMERIC:
            return (numeric_recv(raw), NUMERIC)
    except (struct.error, UnicodeDecodeError, InvalidOperation):
        raise SQLError("22P03", f"incorrect binary data format in bind parameter {n}") from None
    raise SQLError("0A000", f"binary format of type {TYPE_NAMES.get(typ, typ)} is not supported "
                            f"(bind parameter {n})")


def _encode(v: Value, col_type: int, fmt: int) -> str | bytes | None:
    """One result value in its column's format (0 text, 1 binary)."""
    if v[0] is None:
        return None
    if fmt == 0:
        return to_text(v)
    val = v[0]
    if col_type == INT4:
        return struct.pack("!i", int(val))
    if col_type == INT8:
        return struct.pack("!q", int(val))
    if col_type in (OID, XID):
        return struct.pack("!I", int(val))
    if col_type == BOOL:
        return b"\x01" if val else b"\x00"
    if col_type == FLOAT8:
        return struct.pack("!d", float(val))
    if col_type == PG_LSN:
        return struct.pack("!Q", val if isinstance(val, int) else parse_lsn(str(val)))
    if col_type == TIMESTAMPTZ:
        return struct.pack("!q", int(val) - POSTGRES_EPOCH_US)
    if col_type == INTERVAL:
        return struct.pack("!qii", int(val), 0, 0)
    if col_type in (TEXT, NAME, UNKNOWN, VARCHAR, BPCHAR):
        return (to_text(v) or "").encode("utf-8")
    if col_type == NUMERIC:
        return numeric_send(to_text(v) or "0")
    raise SQLError("0A000", f"binary output of type {TYPE_NAMES.get(col_type, col_type)} is not supported")


def numeric_send(text: str) -> bytes:
    """PostgreSQL's numeric binary format: ndigits, weight, sign, dscale, then base-10000 digits."""
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
    return struct.pack(f"!hhHh{len(groups)}h", len(groups), weight, 0x4000 if d < 0 else 0, dscale, *groups)


def numeric_recv(raw: bytes) -> str:
    """The text of a numeric in binary format (as numeric_send writes it)."""
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", raw)
    if sign == 0xC000:
        return "NaN"
    if sign not in (0, 0x4000) or len(raw) != 8 + 2 * ndigits:
        raise struct.error
    digits = struct.unpack_from(f"!{ndigits}h", raw, 8)
    v = sum((Decimal(g).scaleb(4 * (weight - i)) for i, g in enumerate(digits)), Decimal(0))
    text = format(v.quantize(Decimal(1).scaleb(-dscale)), "f")
    return "-" + text if sign == 0x4000 else text


"""The statement and expression tree the executor runs (backend/sql.py), built from PostgreSQL's own parse
tree by backend/parse.py, and the type OIDs both use.

Only what the backend executes has a node here; everything else PostgreSQL parses is refused by
backend/parse.py with 0A000 before it reaches the executor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------
# types (PostgreSQL OIDs)

BOOL, NAME, INT8, INT4, TEXT, OID, XID = 16, 19, 20, 23, 25, 26, 28
FLOAT8, INET, TIMESTAMPTZ, INTERVAL, NUMERIC, PG_LSN = 701, 869, 1184, 1186, 1700, 3220
UNKNOWN = 705     # an untyped string literal

TYPE_NAMES = {BOOL: "boolean", NAME: "name", INT8: "bigint", INT4: "integer", TEXT: "text", OID: "oid",
              XID: "xid", FLOAT8: "double precision", INET: "inet", TIMESTAMPTZ: "timestamp with time zone",
              INTERVAL: "interval", NUMERIC: "numeric", PG_LSN: "pg_lsn", UNKNOWN: "unknown"}
CAST_TYPES = {"text": TEXT, "varchar": TEXT, "name": NAME, "int": INT4, "int4": INT4, "integer": INT4,
              "int8": INT8, "bigint": INT8, "smallint": INT4, "int2": INT4, "bool": BOOL, "boolean": BOOL,
              "numeric": NUMERIC, "decimal": NUMERIC, "float8": FLOAT8, "float": FLOAT8, "real": FLOAT8,
              "pg_lsn": PG_LSN, "timestamptz": TIMESTAMPTZ, "interval": INTERVAL, "oid": OID, "xid": XID,
              "inet": INET}
SERVER_VERSION = "15.0 (walswitch)"

Value = tuple[Any, int]          # (python value, type oid); None is SQL NULL


class Expr:
    pass


@dataclass
class Const(Expr):
    value: Any
    oid: int


@dataclass
class ColRef(Expr):
    name: str
    qual: str | None = None


@dataclass
class Func(Expr):
    name: str
    args: list[Expr]
    star: bool = False          # count(*)


@dataclass
class Cast(Expr):
    expr: Expr
    typename: str


@dataclass
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass
class UnOp(Expr):
    op: str                      # '-', 'not'
    expr: Expr


@dataclass
class IsNull(Expr):
    expr: Expr
    negated: bool


@dataclass
class SelItem:
    expr: Expr | None            # None = '*'
    alias: str | None = None


class Stmt:
    txn_control = False
    write = False


@dataclass
class Insert(Stmt):
    table: str
    columns: list[str] | None
    rows: list[list[Expr]]
    on_conflict: str | None      # None (upsert), 'update', 'nothing'
    write = True


@dataclass
class Delete(Stmt):
    table: str
    where: Expr | None
    write = True


@dataclass
class Update(Stmt):
    table: str
    sets: list[tuple[str, Expr]]
    where: Expr | None
    write = True


@dataclass
class Select(Stmt):
    items: list[SelItem]
    table: str | None = None
    where: Expr | None = None
    order: list[tuple[Expr, bool]] = field(default_factory=list)   # (expr, descending)
    limit: Expr | None = None
    offset: Expr | None = None


@dataclass
class Begin(Stmt):
    read_only: bool = False


@dataclass
class Commit(Stmt):
    txn_control = True


@dataclass
class Rollback(Stmt):
    txn_control = True


@dataclass
class Show(Stmt):
    name: str                    # lower-cased; 'all' for SHOW ALL


@dataclass
class SetStmt(Stmt):
    name: str | None             # None: SET TRANSACTION / SESSION CHARACTERISTICS
    value: str | None            # None: DEFAULT / RESET
    tag: str = "SET"


@dataclass
class Checkpoint(Stmt):
    pass


@dataclass
class RoleStmt(Stmt):
    """CREATE/ALTER/DROP ROLE|USER: its source text, run by backend/roles.py (which parses it into
    pglast's CreateRoleStmt/AlterRoleStmt/DropRoleStmt)."""
    text: str


@dataclass
class Param(Expr):
    """``$n`` of the extended query protocol; its value comes from Bind."""
    number: int                  # 1-based


@dataclass
class InList(Expr):
    """``expr [NOT] IN (a, b, ...)``."""
    expr: Expr
    items: list[Expr]
    negated: bool = False

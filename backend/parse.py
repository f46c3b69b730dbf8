"""PostgreSQL's own parser (libpg_query through pglast) → the statement tree of backend/nodes.py.

Every Query string and every Parse message goes through ``parse``: pglast's JSON output of
PostgreSQL 15's grammar (``pglast.parser.parse_sql_json``, measured ~5x cheaper than building its
object tree, which matters on the commit path), decoded with ``json.loads``, then converted here.
So syntax errors are PostgreSQL's own, with the error position (1-based character offset, which
psql turns into its ``LINE 1: ... ^`` caret), and every statement PostgreSQL parses at least parses:
what we do not execute becomes ``Utility`` (dispatched by node name in backend/sql.py's ``UTILITY``)
or ``Unsupported`` (0A000 naming it).

Depth: the grammar itself refuses absurd nesting ("memory exhausted", as PostgreSQL); what it
accepts is converted with an explicit depth bound (``MAX_DEPTH``), past which we answer as
PostgreSQL does when its stack runs out (54001), so the executor's recursive evaluation stays bounded.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pglast import parser as pg_parser

from backend.nodes import (BOOL, INT4, INT8, NUMERIC, TEXT, UNKNOWN, Begin, BinOp, Cast, ColRef, Commit,
                           Const, Delete, Expr, Func, InList, Insert, IsNull, Param, Rollback, Select, SelItem,
                           SetStmt, Show, Stmt, UnOp, Unsupported, Update, Utility)
from libpq.protocol import SQLError

MAX_DEPTH = 400        # expression nesting we evaluate; deeper: 54001 like PostgreSQL past max_stack_depth (its
                       # 2MB stack reaches ~4,000 levels; json.loads at the default recursion limit ~480)

Node = dict[str, Any]


def stack_depth_error() -> SQLError:
    return SQLError("54001", "stack depth limit exceeded",
                    hint='Increase the configuration parameter "max_stack_depth" (currently 2048kB), '
                         "after ensuring the platform's stack depth limit is adequate.")


def raw_parse(sql: str) -> list[tuple[str, Node]]:
    """PostgreSQL's raw parse: [(node name, node)] per statement; SQLError 42601 with position."""
    try:
        text = pg_parser.parse_sql_json(sql)
    except pg_parser.ParseError as e:
        msg, loc = (e.args + (None,))[:2]
        pos = (loc + 1) if isinstance(loc, int) else len(sql) + 1
        raise SQLError("42601", str(msg), position=pos) from None
    try:
        tree = json.loads(text)
    except RecursionError:
        raise stack_depth_error() from None
    out = []
    for raw in tree.get("stmts", ()):
        ((name, node),) = raw["stmt"].items()
        out.append((name, node))
    return out


def parse(sql: str) -> list[Stmt]:
    """Parse a whole query string (all statements) or raise SQLError (nothing runs on error)."""
    return [convert(name, node) for name, node in raw_parse(sql)]


def convert(name: str, node: Node) -> Stmt:
    builder = STATEMENTS.get(name)
    if builder is None:
        return Utility(name, node, statement_tag(name, node))
    return builder(node)


# ---------------------------------------------------------------------------
# statement names (for 0A000 and command tags)

_TAGS = {"IndexStmt": "CREATE INDEX", "CreateStmt": "CREATE TABLE", "ViewStmt": "CREATE VIEW",
         "CreateTableAsStmt": "CREATE TABLE AS", "DropStmt": "DROP", "TruncateStmt": "TRUNCATE TABLE",
         "CopyStmt": "COPY", "ExplainStmt": "EXPLAIN", "VacuumStmt": "VACUUM", "LockStmt": "LOCK TABLE",
         "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "DeallocateStmt": "DEALLOCATE",
         "CreateFunctionStmt": "CREATE FUNCTION", "DoStmt": "DO", "ListenStmt": "LISTEN",
         "NotifyStmt": "NOTIFY", "UnlistenStmt": "UNLISTEN", "DeclareCursorStmt": "DECLARE CURSOR",
         "FetchStmt": "FETCH", "ClosePortalStmt": "CLOSE CURSOR", "CreateRoleStmt": "CREATE ROLE",
         "AlterRoleStmt": "ALTER ROLE", "DropRoleStmt": "DROP ROLE", "GrantStmt": "GRANT",
         "GrantRoleStmt": "GRANT ROLE", "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
         "AlterTableStmt": "ALTER TABLE", "CreateSchemaStmt": "CREATE SCHEMA", "CheckPointStmt": "CHECKPOINT",
         "CreateSeqStmt": "CREATE SEQUENCE", "AlterSystemStmt": "ALTER SYSTEM", "DiscardStmt": "DISCARD",
         "ReindexStmt": "REINDEX", "ClusterStmt": "CLUSTER", "CommentStmt": "COMMENT",
         "RenameStmt": "ALTER", "CreateExtensionStmt": "CREATE EXTENSION", "MergeStmt": "MERGE",
         "CallStmt": "CALL", "LoadStmt": "LOAD", "ConstraintsSetStmt": "SET CONSTRAINTS"}


def statement_tag(name: str, node: Node) -> str:
    if name in _TAGS:
        return _TAGS[name]
    words = re.findall(r"[A-Z][a-z]*", name.removesuffix("Stmt"))
    return " ".join(w.upper() for w in words) or name


# ---------------------------------------------------------------------------
# statements

def _relname(rv: Node) -> str:
    return f"{rv['schemaname']}.{rv['relname']}" if rv.get("schemaname") else rv["relname"]


def _unsupported(what: str) -> Unsupported:
    """A form of a statement we run that we do not run in this form (0A000 "<what> is not supported")."""
    return Unsupported(what)


def _select(n: Node) -> Stmt:
    if n.get("op", "SETOP_NONE") != "SETOP_NONE":
        return _unsupported("UNION/INTERSECT/EXCEPT")
    for clause, what in (("valuesLists", "VALUES"), ("withClause", "WITH"), ("groupClause", "GROUP BY"),
                         ("havingClause", "HAVING"), ("distinctClause", "SELECT DISTINCT"),
                         ("intoClause", "SELECT INTO"), ("lockingClause", "SELECT FOR UPDATE"),
                         ("windowClause", "WINDOW")):
        if n.get(clause):
            return _unsupported(what)
    table = None
    frm = n.get("fromClause") or []
    if len(frm) > 1 or (frm and "RangeVar" not in frm[0]):
        return _unsupported("a FROM clause other than one relation")
    if frm:
        table = _relname(frm[0]["RangeVar"])
    items = []
    for t in n.get("targetList", []):
        rt = t["ResTarget"]
        val = rt["val"]
        if "ColumnRef" in val and "A_Star" in val["ColumnRef"]["fields"][-1]:
            items.append(SelItem(None))
        else:
            items.append(SelItem(expr(val), rt.get("name")))
    order = []
    for s in n.get("sortClause", []):
        sb = s["SortBy"]
        order.append((expr(sb["node"]), sb.get("sortby_dir") == "SORTBY_DESC"))
    limit = n.get("limitCount")
    offset = n.get("limitOffset")
    return Select(items, table, expr(n["whereClause"]) if n.get("whereClause") else None, order,
                  expr(limit) if limit is not None else None, expr(offset) if offset is not None else None)


def _value_item(n: Node) -> Expr:
    if "SetToDefault" in n:
        return Const(None, TEXT)
    return expr(n)


def _insert(n: Node) -> Stmt:
    if n.get("returningList") or n.get("withClause"):
        return _unsupported("INSERT ... RETURNING" if n.get("returningList") else "WITH")
    cols = [c["ResTarget"]["name"] for c in n.get("cols", [])] or None
    sel = n.get("selectStmt")
    if sel is None:
        rows: list[list[Expr]] = [[]]
    else:
        s = sel["SelectStmt"]
        if not s.get("valuesLists"):
            return _unsupported("INSERT ... SELECT")
        rows = [[_value_item(x) for x in v["List"]["items"]] for v in s["valuesLists"]]
    on_conflict = None
    occ = n.get("onConflictClause")
    if occ is not None:
        on_conflict = "nothing" if occ.get("action") == "ONCONFLICT_NOTHING" else "update"
    return Insert(_relname(n["relation"]), cols, rows, on_conflict)


def _delete(n: Node) -> Stmt:
    if n.get("usingClause") or n.get("returningList"):
        return _unsupported("DELETE ... USING/RETURNING")
    w = n.get("whereClause")
    return Delete(_relname(n["relation"]), expr(w) if w else None)


def _update(n: Node) -> Stmt:
    if n.get("fromClause") or n.get("returningList"):
        return _unsupported("UPDATE ... FROM/RETURNING")
    sets = []
    for t in n["targetList"]:
        rt = t["ResTarget"]
        if rt.get("indirection"):
            return _unsupported("UPDATE of a subfield")
        sets.append((rt["name"], _value_item(rt["val"])))
    w = n.get("whereClause")
    return Update(_relname(n["relation"]), sets, expr(w) if w else None)


def _transaction(n: Node) -> Stmt:
    kind = n.get("kind", "TRANS_STMT_BEGIN")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        read_only = False
        for o in n.get("options", []):
            d = o["DefElem"]
            if d.get("defname") == "transaction_read_only":
                read_only = bool(_const_value(d["arg"]))
        return Begin(read_only)
    if kind == "TRANS_STMT_COMMIT":
        return Commit()
    if kind == "TRANS_STMT_ROLLBACK":
        return Rollback()
    words = {"TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
             "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
             "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED", "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED"}
    return _unsupported(words.get(kind, kind))


def _show(n: Node) -> Stmt:
    return Show(n["name"].lower())


def _const_value(n: Node) -> Any:
    c = n.get("A_Const", {})
    for k in ("sval", "ival", "fval", "boolval"):
        if k in c:
            return c[k].get(k, 0 if k != "sval" else "")
    if "TypeCast" in n:
        return _const_value(n["TypeCast"]["arg"])
    return None


def _set(n: Node) -> Stmt:
    kind = n.get("kind")
    name = n.get("name", "").lower()
    if kind == "VAR_SET_MULTI":                       # SET TRANSACTION ..., SET SESSION CHARACTERISTICS ...
        return SetStmt(None, None)
    if kind == "VAR_RESET_ALL":
        return SetStmt("all", None, tag="RESET")
    if kind == "VAR_RESET":
        return SetStmt(name, None, tag="RESET")
    if kind in ("VAR_SET_DEFAULT", "VAR_SET_CURRENT") or not n.get("args"):
        return SetStmt(name, None)
    parts = []
    for a in n["args"]:
        v = _const_value(a)
        if isinstance(v, bool):
            v = "on" if v else "off"
        parts.append(str(v))
    return SetStmt(name, ", ".join(parts))


STATEMENTS: dict[str, Callable[[Node], Stmt]] = {
    "SelectStmt": _select, "InsertStmt": _insert, "DeleteStmt": _delete, "UpdateStmt": _update,
    "TransactionStmt": _transaction, "VariableShowStmt": _show, "VariableSetStmt": _set,
}


# ---------------------------------------------------------------------------
# expressions

_SVF = {"SVFOP_CURRENT_TIMESTAMP": "now", "SVFOP_CURRENT_TIMESTAMP_N": "now", "SVFOP_LOCALTIMESTAMP": "now",
        "SVFOP_LOCALTIMESTAMP_N": "now", "SVFOP_CURRENT_USER": "current_user", "SVFOP_USER": "current_user",
        "SVFOP_SESSION_USER": "current_user", "SVFOP_CURRENT_ROLE": "current_user",
        "SVFOP_CURRENT_CATALOG": "current_database"}
_OPS = {"=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "||"}


def _typename(tn: Node) -> str:
    names = [x["String"]["sval"] for x in tn["names"]]
    name = names[-1]
    if len(names) == 2 and names[0] == "pg_catalog":
        return {"int4": "integer", "int8": "bigint", "bool": "boolean", "float8": "float8", "float4": "real",
                "int2": "smallint", "varchar": "varchar", "bpchar": "text", "timestamptz": "timestamptz",
                "interval": "interval", "numeric": "numeric", "text": "text"}.get(name, name)
    return name


def _a_const(c: Node) -> Expr:
    if c.get("isnull"):
        return Const(None, UNKNOWN)
    if "ival" in c:
        return Const(c["ival"].get("ival", 0), INT4)
    if "fval" in c:
        s = c["fval"]["fval"]
        if re.fullmatch(r"-?\d+", s):
            v = int(s)
            return Const(v, INT8) if -2 ** 63 <= v < 2 ** 63 else Const(s, NUMERIC)
        return Const(s, NUMERIC)
    if "boolval" in c:
        return Const(bool(c["boolval"].get("boolval", False)), BOOL)
    if "sval" in c:
        return Const(c["sval"].get("sval", ""), UNKNOWN)
    if "bsval" in c:
        return Const(c["bsval"].get("bsval", ""), UNKNOWN)
    raise SQLError("0A000", "constant of this kind is not supported")


def expr(n: Node, depth: int = 0) -> Expr:
    """Convert an expression node; recursion is bounded by MAX_DEPTH (54001 past it)."""
    if depth > MAX_DEPTH:
        raise stack_depth_error()
    d = depth + 1
    ((kind, v),) = n.items()
    if kind == "A_Const":
        return _a_const(v)
    if kind == "ColumnRef":
        f = v["fields"]
        if "A_Star" in f[-1]:
            raise SQLError("42601", 'syntax error at or near "*"')
        names = [x["String"]["sval"] for x in f]
        return ColRef(names[-1], ".".join(names[:-1]) or None)
    if kind == "ParamRef":
        return Param(v["number"])
    if kind == "TypeCast":
        return Cast(expr(v["arg"], d), _typename(v["typeName"]))
    if kind == "FuncCall":
        name = v["funcname"][-1]["String"]["sval"]
        if v.get("over") or v.get("agg_filter") or v.get("agg_order"):
            raise SQLError("0A000", f"{name}() with OVER/FILTER/ORDER BY is not supported")
        return Func(name, [expr(a, d) for a in v.get("args", [])], star=bool(v.get("agg_star")))
    if kind == "A_Expr":
        return _a_expr(v, d)
    if kind == "BoolExpr":
        op = v["boolop"]
        args = [expr(a, d) for a in v["args"]]
        if op == "NOT_EXPR":
            return UnOp("not", args[0])
        word = "and" if op == "AND_EXPR" else "or"
        e = args[0]
        for a in args[1:]:
            e = BinOp(word, e, a)
        return e
    if kind == "NullTest":
        return IsNull(expr(v["arg"], d), v.get("nulltesttype") == "IS_NOT_NULL")
    if kind == "BooleanTest":
        t = v["booltesttype"]
        arg = expr(v["arg"], d)
        if t in ("IS_UNKNOWN", "IS_NOT_UNKNOWN"):
            return IsNull(arg, t == "IS_NOT_UNKNOWN")
        truth = t in ("IS_TRUE", "IS_NOT_TRUE")
        return BinOp("is not" if "NOT" in t else "is", arg, Const(truth, BOOL))
    if kind == "SQLValueFunction":
        return Func(_SVF.get(v["op"], "now"), [])
    if kind == "SetToDefault":
        return Const(None, TEXT)
    what = {"SubLink": "subqueries", "CaseExpr": "CASE", "CoalesceExpr": "COALESCE", "A_ArrayExpr": "arrays",
            "RowExpr": "row constructors", "MinMaxExpr": "GREATEST/LEAST", "A_Indirection": "subscripts",
            "CollateClause": "COLLATE"}.get(kind, kind)
    raise SQLError("0A000", f"{what} are not supported" if what.endswith("s") else f"{what} is not supported")


def _a_expr(v: Node, d: int) -> Expr:
    kind = v["kind"]
    op = v["name"][-1]["String"]["sval"]
    if kind == "AEXPR_IN":
        left = expr(v["lexpr"], d)
        rx = v["rexpr"]
        items = [expr(x, d) for x in (rx["List"]["items"] if "List" in rx else [rx])]
        neg = op == "<>"
        return InList(left, items, neg)
    if kind != "AEXPR_OP" or op not in _OPS:
        raise SQLError("0A000", f"operator {op} ({kind.removeprefix('AEXPR_').lower()}) is not supported")
    if op == "!=":
        op = "<>"
    if "lexpr" not in v:
        r = expr(v["rexpr"], d)
        if op == "+":
            return r
        if op == "-":
            if isinstance(r, Const) and isinstance(r.value, int) and not isinstance(r.value, bool):
                return Const(-r.value, r.oid)
            if isinstance(r, Const) and r.oid == NUMERIC:
                s = str(r.value)
                return Const(s[1:] if s.startswith("-") else "-" + s, NUMERIC)
            return UnOp("-", r)
        raise SQLError("0A000", f"prefix operator {op} is not supported")
    return BinOp(op, expr(v["lexpr"], d), expr(v["rexpr"], d))


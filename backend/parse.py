"""SQL text -> the executor's statements (backend/nodes.py), through PostgreSQL's own parser.

The grammar is PostgreSQL 15's, through ``pglast`` (the binding of libpg_query): syntax errors carry
PostgreSQL's message and the error position (psql draws its ``LINE 1: ... ^`` caret from it), and any
statement PostgreSQL parses parses here too.  What parses but is not executed by walswitch gets
``0A000 <command> is not supported``; this module is the one place that decides it.

Why JSON and not pglast's object tree: ``pglast.parse_sql`` costs about 81 µs for the INSERT of a
commit, ``parser.parse_sql_json`` + ``json.loads`` about 11 µs (this machine, 5,000 runs).  libpg_query
15's JSON writer omits an ``Integer`` whose value is not positive (``SELECT -3`` gives ``"ival": {}``),
so such a constant is read back from the statement text at its location (``_nonpositive_int``).

Depth: PostgreSQL answers ``54001 stack depth limit exceeded`` for expressions nested deeper than its
2 MB ``max_stack_depth`` allows (between 4,000 and 5,000 chained ``+`` in PostgreSQL 15 on x86-64); its
grammar itself stops at 10,000 nested parentheses (``memory exhausted``, 42601, from pglast too).  The
parse tree's nesting is measured on the JSON text before it is decoded, and over MAX_TREE_DEPTH
(2 JSON levels per operator) the statement gets 54001; below it, decoding, translating and evaluating
recurse at most that deep, under RECURSION_LIMIT (Python 3.11 calls between Python functions do not use
the C stack).
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

from pglast import parser as pg_parser

from backend.nodes import (BOOL, INT4, INT8, NUMERIC, TEXT, UNKNOWN, Begin, BinOp, Cast, Checkpoint, ColRef,
                           Commit, Const, Delete, Expr, Func, InList, Insert, IsNull, Param, RoleStmt, Rollback, Select,
                           SelItem, SetStmt, Show, Stmt, UnOp, Update)
from libpq.protocol import SQLError

MAX_TREE_DEPTH = 9000          # JSON nesting levels; 4,500 chained operators
RECURSION_LIMIT = MAX_TREE_DEPTH + 2000
STACK_DEPTH_HINT = ('Increase the configuration parameter "max_stack_depth" (currently 2048kB), after '
                    "ensuring the platform's stack depth limit is adequate.")

Node = dict[str, Any]

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')     # unrolled: linear in the string's length
_BRACKETS = re.compile(r"[\[\]{}]")
_NEG_INT = re.compile(rb"(?:[\s(\-]|/\*.*?\*/)*(\d+)", re.S)


def parse(sql: str) -> list[Stmt]:
    """All statements of a query string, or SQLError (42601 syntax, 0A000 unsupported, 54001 depth)."""
    try:
        text = pg_parser.parse_sql_json(sql)
    except pg_parser.ParseError as e:
        message, location = e.args[0], e.args[1] if len(e.args) > 1 else None
        raise SQLError("42601", message, position=_error_position(sql, location)) from None
    # Fewer brackets than the limit cannot nest beyond it: the exact count (a regex over the whole text,
    # 36 ms holding the GIL for a 16 MiB literal) only runs when the cheap count says it might.
    if len(text) > 2 * MAX_TREE_DEPTH and text.count("[") + text.count("{") > MAX_TREE_DEPTH \
            and _json_depth(text) > MAX_TREE_DEPTH:
        raise SQLError("54001", "stack depth limit exceeded", hint=STACK_DEPTH_HINT)
    if sys.getrecursionlimit() < RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)
    tree = json.loads(text)
    return [_Translator(sql, raw).statement() for raw in tree.get("stmts", [])]


def _error_position(sql: str, location: int | None) -> int | None:
    """PostgreSQL's 1-based character position of a syntax error.

    pglast 5 reports libpg_query's 1-based character cursor minus one, converted as if it were a byte
    offset into characters; undo that (the same for ASCII, right after multi-byte characters)."""
    if location is None:            # "at end of input": PostgreSQL points just past the last character
        return len(sql) + 1
    return len(sql[:location].encode("utf-8")) + 1


def _json_depth(text: str) -> int:
    depth = deepest = 0
    for ch in _BRACKETS.findall(_JSON_STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _only(node: Node) -> tuple[str, Node]:
    ((kind, body),) = node.items()
    return kind, body


def _strings(items: list[Node]) -> list[str]:
    return [i["String"].get("sval", "") for i in items if "String" in i]


# Command names of statements PostgreSQL parses that we do not run, for the 0A000 message.
_COMMANDS = {
    "IndexStmt": "CREATE INDEX", "CreateStmt": "CREATE TABLE", "ViewStmt": "CREATE VIEW",
    "CreateRoleStmt": "CREATE ROLE", "AlterRoleStmt": "ALTER ROLE", "DropRoleStmt": "DROP ROLE",
    "CopyStmt": "COPY", "VacuumStmt": "VACUUM", "ExplainStmt": "EXPLAIN", "TruncateStmt": "TRUNCATE",
    "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "DeallocateStmt": "DEALLOCATE", "LockStmt": "LOCK",
    "DoStmt": "DO", "ListenStmt": "LISTEN", "NotifyStmt": "NOTIFY", "GrantStmt": "GRANT",
    "CreateFunctionStmt": "CREATE FUNCTION", "AlterTableStmt": "ALTER TABLE", "DropStmt": "DROP",
    "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE", "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateSeqStmt": "CREATE SEQUENCE", "CreateTableAsStmt": "CREATE TABLE AS", "DeclareCursorStmt":
    "DECLARE CURSOR", "FetchStmt": "FETCH", "ClosePortalStmt": "CLOSE", "DiscardStmt": "DISCARD",
    "MergeStmt": "MERGE", "CallStmt": "CALL", "ReindexStmt": "REINDEX", "ClusterStmt": "CLUSTER",
}


class _Translator:
    """One raw statement of the JSON tree -> one Stmt; refuses (0A000) what the executor does not run."""

    def __init__(self, sql: str, raw: Node):
        self.sql = sql
        self.raw = raw
        self._bytes: bytes | None = None

    # -- helpers
    def unsupported(self, what: str) -> SQLError:
        return SQLError("0A000", f"{what} is not supported")

    def source(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.sql.encode("utf-8")
        return self._bytes

    def command_name(self, kind: str) -> str:
        if kind in _COMMANDS:
            return _COMMANDS[kind]
        start = self.raw.get("stmt_location", 0)
        length = self.raw.get("stmt_len") or len(self.source()) - start
        words = self.source()[start:start + length].decode("utf-8", "replace").split()
        if not words:
            return kind
        n = 2 if words[0].upper() in ("CREATE", "ALTER", "DROP") and len(words) > 1 else 1
        return " ".join(w.upper() for w in words[:n])

    # -- statements
    def statement(self) -> Stmt:
        kind, body = _only(self.raw["stmt"])
        handler = _STATEMENTS.get(kind)
        if handler is None:
            raise self.unsupported(self.command_name(kind))
        return handler(self, body)

    def relation(self, rv: Node) -> str:
        name = rv["relname"]
        return f'{rv["schemaname"]}.{name}' if rv.get("schemaname") else name

    def select(self, b: Node) -> Select:
        if b.get("op", "SETOP_NONE") != "SETOP_NONE":
            raise self.unsupported("UNION/INTERSECT/EXCEPT")
        for clause, what in (("valuesLists", "VALUES"), ("groupClause", "GROUP BY"), ("havingClause", "HAVING"),
                             ("windowClause", "WINDOW"), ("withClause", "WITH"), ("intoClause", "SELECT INTO"),
                             ("lockingClause", "FOR UPDATE/SHARE"), ("distinctClause", "DISTINCT")):
            if b.get(clause):
                raise self.unsupported(what)
        items = []
        for t in b.get("targetList", []):
            rt = t["ResTarget"]
            val = rt["val"]
            if "ColumnRef" in val and "A_Star" in val["ColumnRef"]["fields"][-1]:
                items.append(SelItem(None))
            else:
                items.append(SelItem(self.expr(val), rt.get("name")))
        st = Select(items)
        frm = b.get("fromClause", [])
        if len(frm) > 1:
            raise self.unsupported("a FROM list of more than one table")
        if frm:
            kind, rv = _only(frm[0])
            if kind != "RangeVar":
                raise self.unsupported("this FROM item")
            st.table = self.relation(rv)
        if "whereClause" in b:
            st.where = self.expr(b["whereClause"])
        for s in b.get("sortClause", []):
            sb = s["SortBy"]
            st.order.append((self.expr(sb["node"]), sb.get("sortby_dir") == "SORTBY_DESC"))
        if "limitCount" in b and not b["limitCount"].get("A_Const", {}).get("isnull"):
            st.limit = self.expr(b["limitCount"])
        if "limitOffset" in b:
            st.offset = self.expr(b["limitOffset"])
        return st

    def insert(self, b: Node) -> Insert:
        for clause, what in (("returningList", "RETURNING"), ("withClause", "WITH")):
            if b.get(clause):
                raise self.unsupported(what)
        cols = [c["ResTarget"]["name"] for c in b["cols"]] if b.get("cols") else None
        rows: list[list[Expr]] = [[]]
        if "selectStmt" in b:
            sel = b["selectStmt"]["SelectStmt"]
            if not sel.get("valuesLists"):
                raise self.unsupported("INSERT ... SELECT")
            rows = [[self.expr_or_default(e) for e in v["List"]["items"]] for v in sel["valuesLists"]]
        on_conflict = None
        if "onConflictClause" in b:
            on_conflict = "nothing" if b["onConflictClause"]["action"] == "ONCONFLICT_NOTHING" else "update"
        return Insert(self.relation(b["relation"]), cols, rows, on_conflict)

    def delete(self, b: Node) -> Delete:
        for clause, what in (("usingClause", "DELETE ... USING"), ("returningList", "RETURNING"),
                             ("withClause", "WITH")):
            if b.get(clause):
                raise self.unsupported(what)
        return Delete(self.relation(b["relation"]), self.expr(b["whereClause"]) if "whereClause" in b else None)

    def update(self, b: Node) -> Update:
        for clause, what in (("fromClause", "UPDATE ... FROM"), ("returningList", "RETURNING"),
                             ("withClause", "WITH")):
            if b.get(clause):
                raise self.unsupported(what)
        sets = []
        for t in b.get("targetList", []):
            rt = t["ResTarget"]
            if rt.get("indirection"):
                raise self.unsupported("assignment to a field or subscript")
            sets.append((rt["name"], self.expr_or_default(rt["val"])))
        return Update(self.relation(b["relation"]), sets,
                      self.expr(b["whereClause"]) if "whereClause" in b else None)

    def transaction(self, b: Node) -> Stmt:
        kind = b["kind"]
        if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            read_only = False
            for o in b.get("options", []):
                d = o["DefElem"]
                if d["defname"] == "transaction_read_only":
                    read_only = bool(self.const_value(d.get("arg")))
            return Begin(read_only)
        if kind == "TRANS_STMT_COMMIT":
            return Commit()
        if kind == "TRANS_STMT_ROLLBACK":
            return Rollback()
        names = {"TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
                 "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
                 "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
                 "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED"}
        raise self.unsupported(names.get(kind, kind))

    def show(self, b: Node) -> Show:
        return Show(b["name"].lower())

    def set(self, b: Node) -> SetStmt:
        kind = b["kind"]
        if kind == "VAR_SET_MULTI":
            return SetStmt(None, None)
        if kind == "VAR_RESET_ALL":
            return SetStmt("all", None, tag="RESET")
        name = b.get("name", "").lower()
        if kind == "VAR_RESET":
            return SetStmt(name, None, tag="RESET")
        if kind in ("VAR_SET_DEFAULT", "VAR_SET_CURRENT"):
            return SetStmt(name, None)
        return SetStmt(name, ", ".join(self.set_arg(a) for a in b.get("args", [])))

    def set_arg(self, node: Node) -> str:
        kind, body = _only(node)
        if kind == "A_Const":
            v = self.const_value(node)
            return "true" if v is True else "false" if v is False else str(v)
        if kind == "TypeCast":
            return self.set_arg(body["arg"])
        raise self.unsupported("this SET value")

    def role(self, b: Node) -> Stmt:
        start = self.raw.get("stmt_location", 0)
        length = self.raw.get("stmt_len") or len(self.source()) - start
        return RoleStmt(self.source()[start:start + length].decode("utf-8"))

    def checkpoint(self, b: Node) -> Checkpoint:
        return Checkpoint()

    # -- expressions
    def expr_or_default(self, node: Node) -> Expr:
        if "SetToDefault" in node:
            return Const(None, TEXT)
        return self.expr(node)

    def expr(self, node: Node) -> Expr:
        kind, body = _only(node)
        handler = _EXPRESSIONS.get(kind)
        if handler is None:
            raise self.unsupported(_EXPR_NAMES.get(kind, kind))
        return handler(self, body)

    def const_value(self, node: Node | None) -> Any:
        if node is None:
            return None
        kind, b = _only(node)
        if kind == "Boolean":
            return bool(b.get("boolval"))
        if kind != "A_Const":
            return None
        if "ival" in b:
            return b["ival"].get("ival") or self._nonpositive_int(b.get("location", -1))
        if "sval" in b:
            return b["sval"].get("sval", "")
        if "fval" in b:
            return b["fval"]["fval"]
        if "boolval" in b:
            return bool(b["boolval"].get("boolval"))
        return None

    def _nonpositive_int(self, location: int) -> int:
        """An Integer constant that libpg_query's JSON left out: 0, or a folded negative literal."""
        m = _NEG_INT.match(self.source(), max(location, 0))
        if m is None:
            return 0
        return -int(m.group(1))

    def a_const(self, b: Node) -> Expr:
        if b.get("isnull"):
            return Const(None, UNKNOWN)
        if "ival" in b:
            v = b["ival"].get("ival") or self._nonpositive_int(b.get("location", -1))
            return Const(v, INT4)
        if "fval" in b:
            s = b["fval"]["fval"]
            if re.fullmatch(r"-?\d+", s):
                v = int(s)
                return Const(v, INT4 if -2 ** 31 <= v < 2 ** 31 else INT8 if -2 ** 63 <= v < 2 ** 63 else NUMERIC)
            return Const(s, NUMERIC)
        if "sval" in b:
            return Const(b["sval"].get("sval", ""), UNKNOWN)
        if "boolval" in b:
            return Const(bool(b["boolval"].get("boolval")), BOOL)
        raise self.unsupported("bit string constants")

    def column_ref(self, b: Node) -> Expr:
        fields = b["fields"]
        if any("A_Star" in f for f in fields):
            raise SQLError("42601", 'syntax error at or near "*"')
        names = _strings(fields)
        if len(names) == 1:
            return ColRef(names[0])
        return ColRef(names[-1], names[-2])

    def func_call(self, b: Node) -> Expr:
        for key, what in (("over", "window functions"), ("agg_filter", "FILTER"), ("agg_order", "ordered aggregates"),
                          ("agg_within_group", "WITHIN GROUP"), ("func_variadic", "VARIADIC")):
            if b.get(key):
                raise self.unsupported(what)
        name = _strings(b["funcname"])[-1]
        if b.get("agg_star"):
            return Func(name, [], star=True)
        return Func(name, [self.expr(a) for a in b.get("args", [])])

    def type_cast(self, b: Node) -> Expr:
        names = _strings(b["typeName"]["names"])
        tn = names[-1]
        if b["typeName"].get("arrayBounds"):
            raise self.unsupported("array types")
        return Cast(self.expr(b["arg"]), {"bpchar": "text", "float4": "float8", "int2": "int4",
                                          "timestamp": "timestamptz"}.get(tn, tn))

    def a_expr(self, b: Node) -> Expr:
        kind = b["kind"]
        op = _strings(b.get("name", []))
        op_name = op[-1] if op else ""
        if kind == "AEXPR_OP":
            if "lexpr" not in b:
                operand = self.expr(b["rexpr"])
                if op_name == "+":
                    return operand
                if op_name == "-":
                    return UnOp("-", operand)
                raise self.unsupported(f"prefix operator {op_name}")
            if op_name not in _BINARY_OPS:
                raise self.unsupported(f"operator {op_name}")
            return BinOp(op_name, self.expr(b["lexpr"]), self.expr(b["rexpr"]))
        if kind == "AEXPR_IN":
            r = b["rexpr"]
            items = [self.expr(i) for i in (r["List"]["items"] if "List" in r else r if isinstance(r, list) else [r])]
            return InList(self.expr(b["lexpr"]), items, negated=op_name == "<>")
        raise self.unsupported(_AEXPR_NAMES.get(kind, kind))

    def bool_expr(self, b: Node) -> Expr:
        args = [self.expr(a) for a in b["args"]]
        if b["boolop"] == "NOT_EXPR":
            return UnOp("not", args[0])
        op = "and" if b["boolop"] == "AND_EXPR" else "or"
        out = args[0]
        for a in args[1:]:
            out = BinOp(op, out, a)
        return out

    def null_test(self, b: Node) -> Expr:
        return IsNull(self.expr(b["arg"]), b["nulltesttype"] == "IS_NOT_NULL")

    def boolean_test(self, b: Node) -> Expr:
        t = b["booltesttype"]
        if t not in ("IS_TRUE", "IS_NOT_TRUE", "IS_FALSE", "IS_NOT_FALSE"):
            raise self.unsupported("IS [NOT] UNKNOWN")
        return BinOp("is not" if "NOT" in t else "is", self.expr(b["arg"]), Const(t.endswith("TRUE"), BOOL))

    def sql_value_function(self, b: Node) -> Expr:
        op = b["op"]
        if op in ("SVFOP_CURRENT_TIMESTAMP", "SVFOP_LOCALTIMESTAMP"):
            return Func("now", [])
        if op in ("SVFOP_CURRENT_USER", "SVFOP_SESSION_USER", "SVFOP_USER", "SVFOP_CURRENT_ROLE"):
            return Func("current_user", [])
        raise self.unsupported(op.replace("SVFOP_", "").lower())

    def param_ref(self, b: Node) -> Expr:
        n = b.get("number", 0)
        if n < 1:
            raise SQLError("42P02", f"there is no parameter ${n}")
        return Param(n)


_BINARY_OPS = {"=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "||"}
_AEXPR_NAMES = {"AEXPR_LIKE": "LIKE", "AEXPR_ILIKE": "ILIKE", "AEXPR_BETWEEN": "BETWEEN",
                "AEXPR_NOT_BETWEEN": "NOT BETWEEN", "AEXPR_DISTINCT": "IS DISTINCT FROM",
                "AEXPR_NOT_DISTINCT": "IS NOT DISTINCT FROM", "AEXPR_SIMILAR": "SIMILAR TO",
                "AEXPR_NULLIF": "NULLIF", "AEXPR_OP_ANY": "ANY", "AEXPR_OP_ALL": "ALL"}
_EXPR_NAMES = {"SubLink": "subqueries", "CaseExpr": "CASE", "CoalesceExpr": "COALESCE", "A_ArrayExpr": "ARRAY",
               "RowExpr": "ROW", "MinMaxExpr": "GREATEST/LEAST", "CollateClause": "COLLATE",
               "A_Indirection": "subscripts", "XmlExpr": "XML", "GroupingFunc": "GROUPING"}

_STATEMENTS: dict[str, Callable[[_Translator, Node], Stmt]] = {
    "SelectStmt": _Translator.select, "InsertStmt": _Translator.insert, "DeleteStmt": _Translator.delete,
    "UpdateStmt": _Translator.update, "TransactionStmt": _Translator.transaction,
    "VariableShowStmt": _Translator.show, "VariableSetStmt": _Translator.set,
    "CheckPointStmt": _Translator.checkpoint,
    "CreateRoleStmt": _Translator.role, "AlterRoleStmt": _Translator.role, "DropRoleStmt": _Translator.role,
}
_EXPRESSIONS: dict[str, Callable[[_Translator, Node], Expr]] = {
    "A_Const": _Translator.a_const, "ColumnRef": _Translator.column_ref, "FuncCall": _Translator.func_call,
    "TypeCast": _Translator.type_cast, "A_Expr": _Translator.a_expr, "BoolExpr": _Translator.bool_expr,
    "NullTest": _Translator.null_test, "BooleanTest": _Translator.boolean_test,
    "SQLValueFunction": _Translator.sql_value_function, "ParamRef": _Translator.param_ref,
}

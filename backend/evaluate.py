"""Expression evaluation for the executor (backend/sql.py's Session inherits ``Evaluator``).

``eval(expr, row)`` gives a ``Value`` (Python value, type OID) for a parsed expression (backend/nodes.py)
over one row (column name -> Value), with PostgreSQL's three-valued logic, IN, comparisons by type and
integer overflow checks; functions come from backend/functions.py's table.  ``walk`` lists an
expression's nodes without recursion; ``_key_equality`` finds a point lookup in a WHERE clause.
What the class needs of its host: ``bound`` ($n values) and ``_unknown_function`` (the 42883 error).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from backend.functions import FUNCS, FuncDef
from backend.nodes import (BOOL, FLOAT8, INT4, INT8, INTERVAL, NUMERIC, OID, PG_LSN, TEXT, TIMESTAMPTZ, UNKNOWN, XID,
                           BinOp, Cast, ColRef, Const, Expr, Func, InList, IsNull, Param, UnOp, Value)
from backend.values import as_bool, as_int, as_lsn, as_text, cast, type_name
from libpq.protocol import SQLError


class Evaluator:
    bound: list[Value] | None

    def _unknown_function(self, f: Func, rel: str | None) -> None:
        raise NotImplementedError

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
            if fd.blocking and fd.nowait is not None:
                return fd.nowait(self, [self.eval(a, row) for a in e.args])
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

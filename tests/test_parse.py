"""backend/parse.py: PostgreSQL's grammar through pglast, converted to the executor's tree.

Unit level (no server): positions of syntax errors, statements PostgreSQL parses but we do not run,
deep nesting bounded without Python recursion errors, parameters and flat IN lists.
"""
from __future__ import annotations

import pytest

from backend import parse as PR
from backend.nodes import InList, Param, Unsupported, Utility
from libpq.protocol import SQLError


@pytest.mark.parametrize("q,message,position", [
    ("SELEC 1", 'syntax error at or near "SELEC"', 1),
    ("select 1 from", "syntax error at end of input", 14),
    ("SELECT * FROM kv WHERE key = 'a' AND", "syntax error at end of input", 37),
    ("SELECT 1 2", 'syntax error at or near "2"', 10),
])
def test_syntax_error_position(q, message, position):
    with pytest.raises(SQLError) as ei:
        PR.parse(q)
    assert (ei.value.sqlstate, ei.value.message, ei.value.position) == ("42601", message, position)
    assert f"P{position}\0".encode() in ei.value.encode()


@pytest.mark.parametrize("q,kind,tag", [
    ("CREATE INDEX i ON kv (value)", "IndexStmt", "CREATE INDEX"),
    ("CREATE TABLE t (a int)", "CreateStmt", "CREATE TABLE"),
    ("CREATE ROLE r LOGIN", "CreateRoleStmt", "CREATE ROLE"),
    ("ALTER ROLE r PASSWORD 'x'", "AlterRoleStmt", "ALTER ROLE"),
    ("DROP ROLE r", "DropRoleStmt", "DROP ROLE"),
    ("VACUUM kv", "VacuumStmt", "VACUUM"),
    ("CHECKPOINT", "CheckPointStmt", "CHECKPOINT"),
])
def test_utility_statements_parse(q, kind, tag):
    (st,) = PR.parse(q)
    assert isinstance(st, Utility) and (st.kind, st.tag) == (kind, tag)


@pytest.mark.parametrize("q,what", [
    ("SELECT 1 UNION SELECT 2", "UNION/INTERSECT/EXCEPT"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
    ("INSERT INTO kv SELECT 'a', 'b'", "INSERT ... SELECT"),
    ("SAVEPOINT s", "SAVEPOINT"),
])
def test_unsupported_forms_parse(q, what):
    (st,) = PR.parse(q)
    assert isinstance(st, Unsupported) and st.tag == what


def test_deep_nesting_is_bounded():
    (st,) = PR.parse("SELECT " + "(" * 1000 + "1" + ")" * 1000)       # parentheses make no nodes
    assert st.items[0].expr.value == 1
    for q in ("SELECT " + "+".join(["1"] * 5000), "SELECT " + " || ".join(["'a'"] * 5000)):
        with pytest.raises(SQLError) as ei:
            PR.parse(q)
        assert ei.value.sqlstate == "54001"
    with pytest.raises(SQLError) as ei:
        PR.parse("SELECT " + "(" * 100000 + "1" + ")" * 100000)
    assert ei.value.message == 'memory exhausted at or near "("'


def test_params_and_flat_in_list():
    (st,) = PR.parse("SELECT value FROM kv WHERE key IN (" + ",".join(f"'{i}'" for i in range(100000)) + ")")
    assert isinstance(st.where, InList) and len(st.where.items) == 100000
    (st,) = PR.parse("UPDATE kv SET value = $2 WHERE key = $1")
    assert st.sets[0][1] == Param(2) and st.where.right == Param(1)

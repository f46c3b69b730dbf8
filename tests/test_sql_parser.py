"""PostgreSQL's own grammar (pglast) in front of the executor, seen through psql and psycopg2.

The expected answers are PostgreSQL 15's, measured with its psql against a PostgreSQL 15 server on
this machine: the same message and caret for a syntax error, a result or the same error for deep
nesting, and 0A000 for a statement PostgreSQL parses but walswitch does not run.
"""
from __future__ import annotations

import subprocess

import psycopg2
import pytest

from backend import sql
from libpq.protocol import SQLError
from tests.cluster import PGBIN


def psql(node, query: str) -> subprocess.CompletedProcess:
    """The query through psql's standard input (a 100,000-deep statement does not fit in argv)."""
    return subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(node.port),
                           "-U", "postgres", "postgres"], input=query + ";\nSELECT 'still here';\n",
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def primary(tmp_path_factory):
    # One server for the module; the nodes fixture is function-scoped, so clean up as it does.
    from tests.cluster import Node
    from tests.conftest import SESSION_DATADIRS
    n = Node(tmp_path_factory.mktemp("parser"), "primary")
    SESSION_DATADIRS.append(n.datadir)
    n.init(1)
    n.start()
    yield n
    problems = n.cleanup()
    assert not problems, problems


@pytest.mark.timeout(60)
def test_syntax_error_with_caret(primary):
    p = psql(primary, "SELEC 1")
    assert 'ERROR:  syntax error at or near "SELEC"\nLINE 1: SELEC 1;\n        ^' in p.stderr
    assert p.stdout.strip() == "still here"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("query,out,err", [
    ("SELECT " + "(" * 1000 + "1" + ")" * 1000, "1", None),
    ("SELECT " + "(" * 100_000 + "1" + ")" * 100_000, None, 'ERROR:  memory exhausted at or near "("'),
    ("SELECT " + "+".join(["1"] * 4000), "4000", None),
    ("SELECT " + "+".join(["1"] * 5000), None, "ERROR:  stack depth limit exceeded"),
    ("SELECT 1 WHERE " + " AND ".join(["true"] * 5000), "1", None),
    ("SELECT 1 IN (" + ",".join(map(str, range(100_000))) + ")", "t", None),
    ("SELECT 99999 NOT IN (" + ",".join(map(str, range(100_000))) + ")", "f", None),
])
def test_deep_and_long_statements_answer_as_postgresql(primary, query, out, err):
    p = psql(primary, query)
    lines = p.stdout.splitlines()
    if out is not None:
        assert lines == [out, "still here"], p.stderr
    else:
        assert err in p.stderr and lines == ["still here"], p.stderr


@pytest.mark.timeout(60)
def test_stack_depth_error_has_postgresql_sqlstate_and_hint(primary):
    with psycopg2.connect(primary.dsn()) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute("SELECT " + "+".join(["1"] * 5000))
        assert ei.value.pgcode == "54001"
        assert 'max_stack_depth' in ei.value.diag.message_hint


@pytest.mark.timeout(60)
@pytest.mark.parametrize("query,message", [
    ("CREATE INDEX i ON kv (value)", "CREATE INDEX is not supported"),
    ("CREATE TABLE t (a int)", "CREATE TABLE is not supported"),
    ("VACUUM kv", "VACUUM is not supported"),
    ("SELECT key FROM kv GROUP BY key", "GROUP BY is not supported"),
    ("SELECT CASE WHEN true THEN 1 END", "CASE is not supported"),
    ("SAVEPOINT a", "SAVEPOINT is not supported"),
])
def test_parsed_but_not_run_is_0A000(primary, query, message):
    with psycopg2.connect(primary.dsn()) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute(query)
        assert ei.value.pgcode == "0A000" and ei.value.diag.message_primary == message
    assert primary.sql("SELECT 1") == [(1,)]


def test_error_position_is_one_based_character_index():
    with pytest.raises(SQLError) as ei:
        sql.parse("SELECT 'é', 1 2")
    assert ei.value.position == len("SELECT 'é', 1 ") + 1


@pytest.mark.parametrize("text,value", [("-3", -3), ("0", 0), ("- 3", -3), ("-(3)", -3), ("-/* c */7", -7),
                                        ("- -3", 3), ("-2147483648", -2147483648), ("-0", 0)])
def test_negative_integer_constants(text, value):
    (st,) = sql.parse(f"SELECT {text}")
    e = st.items[0].expr
    assert (e.value if isinstance(e, sql.Const) else None) == value or \
        (isinstance(e, sql.UnOp) and e.expr.value == -value)

"""Reload with a configuration file that has errors, and the settings files PostgreSQL leaves behind.

* ``walswitch reload`` (SIGHUP) when walswitch.conf has a bad value: PostgreSQL's lines (the value's
  error, then 'configuration file "..." contains errors; unaffected changes were applied'), the good
  changes apply, and pg_hba.conf is re-read all the same (the postmaster signals its children whatever
  the file held); with a syntax error: '... contains errors; no changes were applied', hba still re-read.
* postgresql.conf / postgresql.auto.conf: PostgreSQL's settings that walswitch does not implement are
  skipped with one log line naming them; a name PostgreSQL does not know refuses the start, naming
  file and line.
* ``SHOW data_directory_mode`` is the data directory's real mode.
"""
from __future__ import annotations

import os

import psycopg2
import pytest

from tests.cluster import walswitch, wait_for


def hba_reject_first(node, user: str) -> None:
    path = os.path.join(node.datadir, "pg_hba.conf")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(f"host all {user} 127.0.0.1/32 reject\n" + text)


def refused(node, user: str) -> bool:
    try:
        psycopg2.connect(node.dsn(user=user)).close()
    except psycopg2.OperationalError as e:
        return "pg_hba.conf rejects connection" in str(e)
    return False


def show(node, name: str) -> str:
    return node.sql(f"SHOW {name}")[0][0]


@pytest.mark.timeout(180)
def test_reload_with_errors_still_reloads_hba(nodes):
    n = nodes.primary()
    n.sql("CREATE ROLE bob LOGIN")
    n.sql("CREATE ROLE carol LOGIN")
    assert not refused(n, "bob") and show(n, "password_encryption") == "scram-sha-256"
    conf = os.path.join(n.datadir, "walswitch.conf")

    # a bad value beside a good change: the good one applies, the bad one keeps its value
    n.set_conf(statement_timeout="soon", password_encryption="md5")
    hba_reject_first(n, "bob")
    walswitch("reload", "-D", n.datadir)
    n.wait_log(f'configuration file "{conf}" contains errors; unaffected changes were applied')
    assert 'invalid value for parameter "statement_timeout": "soon"' in n.log_text()
    wait_for(lambda: refused(n, "bob"), 30, "pg_hba.conf re-read despite the bad settings file")
    wait_for(lambda: show(n, "password_encryption") == "md5", 30, "the good change applied")
    assert show(n, "statement_timeout") == "0"

    # a syntax error: nothing of the file applies, pg_hba.conf is still re-read
    with open(conf, "a") as f:
        f.write("this is not a setting\n")
    hba_reject_first(n, "carol")
    walswitch("reload", "-D", n.datadir)
    n.wait_log(f'configuration file "{conf}" contains errors; no changes were applied')
    wait_for(lambda: refused(n, "carol"), 30, "pg_hba.conf re-read despite the syntax error")
    assert n.sql("SELECT 1") == [(1,)]


@pytest.mark.timeout(180)
def test_postgresql_conf_names_and_directory_mode(nodes):
    n = nodes.primary(start=False)
    pgconf = os.path.join(n.datadir, "postgresql.conf")
    with open(pgconf, "w") as f:
        f.write("shared_buffers = 128MB\nwork_mem = '4MB'\nmyext.flavour = 'mint'\nstatement_timeout = '5s'\n")
    os.chmod(n.datadir, 0o750)
    n.start()
    n.wait_log(f'PostgreSQL settings that walswitch does not implement were ignored in file "{pgconf}": '
               "shared_buffers, work_mem, myext.flavour")
    assert n.log_text().count("does not implement were ignored") == 1
    assert show(n, "statement_timeout") == "5s"
    assert show(n, "data_directory_mode") == "0750"
    walswitch("stop", "-D", n.datadir)
    os.chmod(n.datadir, 0o700)
    with open(pgconf, "a") as f:
        f.write("\nshared_bufers = 1GB\n")
    p = n.start(check=False)
    assert p.returncode != 0
    assert f'unrecognized configuration parameter "shared_bufers" in file "{pgconf}" line 6' in p.stderr, p.stderr
    with open(pgconf, "w") as f:
        f.write("work_mem = '4MB'\n")
    n.start()
    assert show(n, "data_directory_mode") == "0700"

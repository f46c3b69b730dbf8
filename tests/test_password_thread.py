"""The `password` method against a SCRAM secret runs PBKDF2 in a thread (backend/session.py
``auth_check_done``; hashlib releases the GIL): the one backend loop keeps serving other sessions
while a login's password is checked.  A secret with 3,000,000 iterations makes one check last about a
second; another session's queries must complete during it.  CREATE ROLE ... PASSWORD hashes off the
loop too (roles.passwords_to_hash), and the secret it stores logs in."""
from __future__ import annotations

import os
import threading
import time

import psycopg2
import pytest

from libpq import scram


@pytest.mark.timeout(180)
def test_password_check_off_the_loop(nodes):
    n = nodes.primary()
    slow = scram.make_verifier("slowpw", iterations=3_000_000).encode()
    n.sql("CREATE ROLE slow LOGIN PASSWORD %s", (slow,))
    path = os.path.join(n.datadir, "pg_hba.conf")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write("host all slow 127.0.0.1/32 password\n" + text)
    assert n.sql("SELECT pg_reload_conf()") == [(True,)]

    other = n.connect()
    done: dict = {}

    def login():
        t0 = time.monotonic()
        try:
            psycopg2.connect(n.dsn(user="slow", password="slowpw")).close()
            done["ok"] = True
        except psycopg2.OperationalError as e:
            done["error"] = e
        done["took"] = time.monotonic() - t0
    th = threading.Thread(target=login, daemon=True)
    start = time.monotonic()
    th.start()
    served = []
    cur = other.cursor()
    while th.is_alive():
        cur.execute("SELECT 1")
        served.append(time.monotonic() - start)
    th.join()
    end = done["took"]
    assert done.get("ok"), done
    if end < 0.3:
        pytest.skip(f"the check took {end:.2f} s, too short to tell")
    during = [t for t in served if 0.1 < t < end - 0.05]
    assert len(during) >= 3, f"no other query was served during the {end:.2f} s password check: {served[:10]}"
    # wrong password: still 28P01
    with pytest.raises(psycopg2.OperationalError) as ei:
        psycopg2.connect(n.dsn(user="slow", password="nope"))
    assert 'password authentication failed for user "slow"' in str(ei.value)
    # CREATE ROLE ... PASSWORD (hashed off the loop) and ALTER ROLE: the secret works
    n.sql("CREATE ROLE quick LOGIN PASSWORD 'qpw'")
    n.sql("ALTER ROLE slow PASSWORD 'newpw'")
    with open(path, "w") as f:
        f.write("host all quick,slow 127.0.0.1/32 scram-sha-256\n" + text)
    assert n.sql("SELECT pg_reload_conf()") == [(True,)]
    for user, pw in (("quick", "qpw"), ("slow", "newpw")):
        deadline = time.monotonic() + 30
        while True:
            try:
                c = psycopg2.connect(n.dsn(user=user, password=pw))
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        c.close()
    (secret,), = n.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'quick'")
    assert secret.startswith("SCRAM-SHA-256$4096:")
    other.close()

"""Connection cost of each authentication method: median time of a psycopg2 connect + close.

``python -m bench.auth_connect [N]``: one walswitch primary, pg_hba.conf switched between trust,
md5, scram-sha-256 and password (walswitch reload between them), N connections each (default 50).
The SCRAM key derivation (4096 PBKDF2 rounds) runs in the client (libpq); the server computes it
only for ``password`` and when a role's password is set.
"""
from __future__ import annotations

import sys
import time

import psycopg2

from bench.common import Server, free_port, median, tempdir, wait_for, ws, ws_init, ws_start, ws_stop

METHODS = ("trust", "md5", "scram-sha-256", "password")


def main(n: int = 50) -> None:
    with tempdir("auth-bench") as base:
        srv = Server("walswitch", base / "p", free_port())
        ws_init(srv.datadir, srv.port, 1)
        ws_start(srv)
        try:
            srv.query("SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'pw'")
            srv.query("CREATE ROLE scramuser LOGIN PASSWORD 'pw'")
            for method in METHODS:
                user = "md5user" if method == "md5" else "scramuser"
                (srv.datadir / "pg_hba.conf").write_text(
                    f"host all postgres 127.0.0.1/32 trust\nhost all {user} 127.0.0.1/32 {method}\n")
                ws("reload", "-D", str(srv.datadir))
                dsn = srv.dsn(user=user, password="pw")

                def ok() -> bool:
                    try:
                        psycopg2.connect(dsn + " password=wrong").close()
                        return method == "trust"
                    except psycopg2.OperationalError:
                        return method != "trust"
                wait_for(ok, 30, f"{method} in force")
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    psycopg2.connect(dsn).close()
                    times.append(time.perf_counter() - t)
                print(f"{method:15s} median connect {median(times) * 1000:6.2f} ms  (n={n})")
        finally:
            ws_stop(srv)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)

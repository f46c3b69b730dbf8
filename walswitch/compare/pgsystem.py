"""Real PostgreSQL 15 as the system under test (``walswitch compare --postgres``).

The same set-up as ``WalswitchSystem`` (systems.py): a primary archiving with
``cp`` into the run's archive, the standby under test behind the link proxy
with the archive's restore script, optionally a second standby to promote;
the same load, faults and settings (``wal_retrieve_retry_interval``,
``wal_keep_size``, ``checkpoint_timeout``).  Its figures come from its own log
(pglog.py; the standby logs at DEBUG2 with ``log_line_prefix = '%m [%p] '``)
and from ``pg_stat_wal_receiver`` and ``pg_last_wal_*_lsn()``.

PostgreSQL's tools refuse root: they run as the ``postgres`` user (servers.py).
PostgreSQL has no injection points: ``kill ROLE at POINT`` kills at once.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg2

from walswitch.compare.archive import Archive
from walswitch.compare.pglog import parse_lines, pg_trace
from walswitch.compare.scenario import Cluster
from walswitch.compare.servers import (PGBIN, BenchError, Server, as_postgres, free_port, pg_basebackup, pg_init,
                                       pg_start, wait_for)
from walswitch.compare.systems import WALSWITCH_ONLY, System, conninfo, server_processes

LOGGING = {"log_line_prefix": "%m [%p] ", "log_timezone": "UTC"}


def available() -> str | None:
    """None when PostgreSQL 15's server tools are here; else why not (one line)."""
    missing = [t for t in ("initdb", "pg_ctl", "postgres", "pg_basebackup") if not (PGBIN / t).exists()]
    if missing:
        return f"PostgreSQL 15 not found: {', '.join(str(PGBIN / t) for t in missing)} missing " \
               f"(make pg installs it)"
    return None


class PostgresSystem(System):
    kind = "postgresql"
    title = "postgres"

    def __init__(self, base: Path, cluster: Cluster) -> None:
        super().__init__(base, cluster, "postgresql")
        self._conn = None        # the sampler's connection to the standby
        self.received: list[tuple[float, int]] = []
        self._log_offset = 0                 # how far stream_news has read the standby's log
        self._last_start: float | None = None

    def init_primary(self, archive: Archive) -> Server:
        c = self.cluster
        datadir, port = self.base / "primary", free_port()
        pg_init(self.base, datadir, port, c.segment_size_mb, {
            **LOGGING, "archive_mode": "on", "archive_command": archive.archive_command,
            "wal_keep_size": f"{c.wal_keep_size_mb}MB", "checkpoint_timeout": f"{c.checkpoint_timeout_s}s"})
        self.primary = Server("postgresql", datadir, port, "primary")
        self.servers.append(self.primary)
        self.start(self.primary)
        self.primary.query("CREATE TABLE kv (key text PRIMARY KEY, value text)")
        return self.primary

    def init_standbys(self, archive: Archive, proxy_port: int) -> None:
        self.standby = self._standby(archive, "standby", proxy_port, True)
        if self.cluster.standbys > 1:
            self.standby2 = self._standby(archive, "standby2", self.primary.port, False)

    def _standby(self, archive: Archive, name: str, upstream: int, faults: bool) -> Server:
        c = self.cluster
        datadir = self.base / name
        conf: dict[str, Any] = {
            **LOGGING, "primary_conninfo": conninfo(upstream, name),
            "restore_command": archive.restore_command(name, c.restore_latency_ms),
            "wal_retrieve_retry_interval": f"{c.retry_interval_ms}ms", "wal_receiver_status_interval": "1s",
            "wal_keep_size": f"{c.wal_keep_size_mb}MB", "hot_standby": True,
            "archive_mode": "off" if faults else "on", "archive_command": archive.archive_command}
        if faults:
            conf["log_min_messages"] = "debug2"
            conf.update({k: v for k, v in c.settings.items() if k not in WALSWITCH_ONLY})
        port = pg_basebackup(self.primary, self.base, datadir, conf)
        srv = Server("postgresql", datadir, port, name)
        self.servers.append(srv)
        self.start(srv)
        return srv

    def start(self, srv: Server) -> None:
        pg_start(srv)

    def stop(self, srv: Server, mode: str) -> None:
        srv.remember_processes()
        if srv.postmaster_pid():
            as_postgres([str(PGBIN / "pg_ctl"), "-D", str(srv.datadir), "-m", mode, "-w", "-t",
                         str(int(self.cluster.timeout_s)), "stop"])
        wait_for(lambda: not server_processes(srv.datadir), 15, f"{srv.role} processes to exit")

    def promote_standby2(self) -> None:
        r = as_postgres([str(PGBIN / "pg_ctl"), "-D", str(self.standby2.datadir), "-w", "-t",
                         str(int(self.cluster.timeout_s)), "promote"])
        if r.returncode:
            raise BenchError(f"pg_ctl promote failed: {r.stderr.strip() or r.stdout.strip()}")

    def kill(self, role: str, point: str = "") -> str:
        """As System.kill; PostgreSQL stops the whole server when its startup process dies (after
        PM_STARTUP a startup failure is not crash-restarted): start it again, as a supervisor would."""
        pm = self.standby.postmaster_pid()
        what = super().kill(role, point)
        if role == "startup" and pm:
            try:
                wait_for(lambda: not server_processes(self.standby.datadir), 15, "the standby to stop")
            except BenchError:
                return what
            self.start(self.standby)
            what += "; the server stopped (startup process failure) and was started again"
        return what

    def arm_kill(self, role: str, point: str) -> None:
        # No injection points in PostgreSQL: the kill happens now.
        self.kill(role)

    def _standby_query(self, sql: str) -> tuple:
        for _ in range(2):
            try:
                if self._conn is None:
                    self._conn = psycopg2.connect(self.standby.dsn(connect_timeout=2))
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute(sql)
                    return cur.fetchone()
            except psycopg2.Error:
                self._close()
        raise BenchError("the standby does not answer")

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def sample(self) -> tuple[int | None, int | None]:
        from xlog.lsn import parse_lsn
        import time
        rcv, rep = self._standby_query("SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")
        rcv_i, rep_i = (parse_lsn(rcv) if rcv else None), (parse_lsn(rep) if rep else None)
        if rcv_i:
            self.received.append((time.time(), rcv_i))
        return rcv_i, rep_i

    def streaming(self) -> bool:
        row = self._standby_query("SELECT status FROM pg_stat_wal_receiver")
        return bool(row) and row[0] == "streaming"

    def stream_news(self) -> tuple[float | None, float | None]:
        """The latest "started streaming WAL" of the standby's log (read on from where we stopped)."""
        path = self.standby.datadir / "server.log"
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return self._last_start, None
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for e in parse_lines(chunk[:end].decode("utf-8", "replace").splitlines()):
            if e["kind"] == "stream_start":
                self._last_start = e["t"]
        return self._last_start, None

    def events(self) -> list[dict]:
        others = {s.role: s.datadir / "server.log" for s in self.servers if s is not self.standby}
        tr = pg_trace(self.standby.datadir / "server.log", others)
        tr += [{"t": t, "kind": "received", "server": "standby", "lsn": lsn} for t, lsn in self.received]
        tr.sort(key=lambda e: e["t"])
        return tr

    def teardown(self) -> None:
        self._close()
        super().teardown()

    def force_cleanup(self) -> None:
        from walswitch.compare.servers import pg_stop
        self._close()
        for srv in self.servers:
            with contextlib.suppress(Exception):
                pg_stop(srv)

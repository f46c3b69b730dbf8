"""The system under test of one run: a primary, the standby under test and maybe a second standby.

``System`` is what the runner (run.py) drives, whatever the server:
``WalswitchSystem`` here (one approach, chosen by ``standby_wal_coordination``)
and ``PostgresSystem`` in pgsystem.py (real PostgreSQL 15).  Both are set up
the same way:

* the primary archives into the run's archive (archive.py) with ``cp``;
* the standby under test is a base backup of it whose ``primary_conninfo``
  goes through the link proxy (walswitch/linkproxy.py) and whose
  ``restore_command`` is the archive's script (latency and faults);
* a second standby, when the scenario promotes one, streams straight from the
  primary, archives into the same archive once promoted, and restores through
  a control directory of its own (never faulted).

After ``promote`` the second standby is the primary: ``self.primary`` points
to it and the runner sends the load and the link proxy there.

Roles killed by ``kill``: startup, walreceiver and postmaster of the standby
under test, walsender of the primary; found by process title and working
directory (both servers chdir into their data directory).  A killed
postmaster leaves the standby down: it is started again once every process
of it has gone, as a supervisor would.
"""
from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from utils.events import read_events
from walswitch.compare.archive import Archive
from walswitch.compare.scenario import Cluster
from walswitch.compare.servers import (BenchError, Server, free_port, wait_for, ws, ws_basebackup, ws_init, ws_start,
                                       ws_status, ws_stop)

# Settings only walswitch knows (not passed to PostgreSQL).
WALSWITCH_ONLY = {"standby_wal_coordination", "concurrent_guard", "walreceiver_restore_prefetch",
                  "restore_command_timeout"}


def conninfo(port: int, name: str) -> str:
    return f"host=127.0.0.1 port={port} user=postgres application_name={name} connect_timeout=2"


def server_processes(datadir: Path, title_prefix: str = "") -> list[psutil.Process]:
    """Processes working in datadir (a server's postmaster and children), optionally by title."""
    want = str(Path(datadir).resolve())
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if title_prefix and not cmd.startswith(title_prefix):
                continue
            if p.cwd() == want:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def sigkill(procs: list[psutil.Process]) -> list[int]:
    pids = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
            pids.append(p.pid)
    return pids


class System:
    """Common shape; subclasses set ``kind``/``label`` and implement the server-specific verbs."""

    kind = "?"
    title = "?"                         # process-title prefix: "walswitch" or "postgres"

    def __init__(self, base: Path, cluster: Cluster, label: str) -> None:
        self.base = base
        self.cluster = cluster
        self.label = label
        self.primary: Server | None = None
        self.old_primary: Server | None = None
        self.standby: Server | None = None
        self.standby2: Server | None = None
        self.servers: list[Server] = []
        self.promoted_at: float | None = None

    # ------------------------------------------------------------ set-up (subclasses)
    def init_primary(self, archive: Archive) -> Server:
        raise NotImplementedError

    def init_standbys(self, archive: Archive, proxy_port: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ verbs (subclasses)
    def start(self, srv: Server) -> None:
        raise NotImplementedError

    def stop(self, srv: Server, mode: str) -> None:
        raise NotImplementedError

    def promote_standby2(self) -> None:
        raise NotImplementedError

    def sample(self) -> tuple[int | None, int | None]:
        """(received, replayed) positions of the standby under test, None when unknown."""
        raise NotImplementedError

    def streaming(self) -> bool:
        raise NotImplementedError

    def events(self) -> list[dict]:
        """The run's trace (trace.py's shape), from the servers' own records."""
        raise NotImplementedError

    def arm_kill(self, role: str, point: str) -> None:
        raise NotImplementedError

    def stream_news(self) -> tuple[float | None, float | None]:
        """(time of the latest stream start, time of the latest kill at an injection point), None if none."""
        raise NotImplementedError

    def leaks(self) -> list[str]:
        """After teardown: what any server of the run left behind."""
        problems = []
        for srv in self.servers:
            left = server_processes(srv.datadir)
            if left:
                problems.append(f"{srv.role}: processes left: {[' '.join(p.cmdline())[:80] for p in left]}")
                sigkill(left)
                psutil.wait_procs(left, timeout=5)
        return problems

    def teardown(self) -> None:
        for srv in reversed(self.servers):
            with contextlib.suppress(Exception):
                self.stop(srv, "fast")

    # ------------------------------------------------------------ common verbs
    def primary_stop(self, mode: str) -> None:
        self.stop(self.primary, mode)

    def primary_start(self) -> None:
        self.start(self.primary)

    def query(self, srv: Server, sql: str, args: Any = None) -> list[tuple]:
        return srv.query(sql, args)

    def flush_lsn(self) -> int:
        from xlog.lsn import parse_lsn
        return parse_lsn(self.query(self.primary, "SELECT pg_current_wal_lsn()")[0][0])

    def current_segment(self, offset: int = 0) -> str:
        """The primary's current segment file name (plus offset segments)."""
        from xlog.lsn import parse_segment_name, segment_name
        segsize = self.cluster.segment_size_mb * 1024 * 1024
        name = self.query(self.primary, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        tli, segno = parse_segment_name(name, segsize)
        return segment_name(tli, max(0, segno + offset), segsize)

    def rows(self, srv: Server) -> dict[str, str]:
        return dict(self.query(srv, "SELECT key, value FROM kv"))

    def kill(self, role: str, point: str = "") -> str:
        """SIGKILL a process now, or arm its injection point; returns what was done (for the trace)."""
        if point:
            self.arm_kill(role, point)
            return f"{role} armed at {point}"
        if role == "walsender":
            procs = server_processes(self.primary.datadir, f"{self.title}: walsender")
        elif role == "postmaster":
            pid = self.standby.postmaster_pid()
            procs = [psutil.Process(pid)] if pid and psutil.pid_exists(pid) else []
        else:
            procs = server_processes(self.standby.datadir, f"{self.title}: {role}")
        pids = sigkill(procs)
        psutil.wait_procs(procs, timeout=self.cluster.timeout_s)
        if role == "postmaster" and pids:
            self.restart_after_postmaster_kill()
        return f"{role} killed (pid {', '.join(map(str, pids)) or 'none running'})"

    def restart_after_postmaster_kill(self) -> None:
        wait_for(lambda: not server_processes(self.standby.datadir), self.cluster.timeout_s,
                 "the killed postmaster's children to exit")
        self.start(self.standby)

    def promote(self) -> Server:
        if self.standby2 is None:
            raise BenchError("promote needs a second standby (cluster.standbys = 2)")
        self.promote_standby2()
        self.old_primary, self.primary = self.primary, self.standby2
        self.primary.role = "primary"
        self.promoted_at = time.time()
        return self.primary


class WalswitchSystem(System):
    kind = "walswitch"
    title = "walswitch"

    def __init__(self, base: Path, cluster: Cluster, approach: str) -> None:
        super().__init__(base, cluster, approach)
        self.approach = approach

    def init_primary(self, archive: Archive) -> Server:
        c = self.cluster
        datadir, port = self.base / "primary", free_port()
        ws_init(datadir, port, c.segment_size_mb, {
            "archive_mode": "on", "archive_command": archive.archive_command,
            "wal_keep_size": f"{c.wal_keep_size_mb}MB", "checkpoint_timeout": f"{c.checkpoint_timeout_s}s"})
        self.primary = Server("walswitch", datadir, port, "primary")
        self.servers.append(self.primary)
        self.start(self.primary)
        return self.primary

    def standby_conf(self, archive: Archive, name: str, upstream: int, faults: bool) -> dict:
        c = self.cluster
        conf: dict[str, Any] = {
            "primary_conninfo": conninfo(upstream, name),
            "restore_command": archive.restore_command(name, c.restore_latency_ms),
            "wal_retrieve_retry_interval": f"{c.retry_interval_ms}ms", "wal_receiver_status_interval": "1s",
            "standby_wal_coordination": self.approach if faults else "stop_walreceiver",
            "walreceiver_restore_prefetch": c.prefetch, "wal_keep_size": f"{c.wal_keep_size_mb}MB",
            "archive_mode": "on" if not faults else "off", "archive_command": archive.archive_command}
        if faults:
            conf.update(c.settings)
        return conf

    def init_standbys(self, archive: Archive, proxy_port: int) -> None:
        self.standby = self._standby(archive, "standby", proxy_port, True)
        if self.cluster.standbys > 1:
            self.standby2 = self._standby(archive, "standby2", self.primary.port, False)

    def _standby(self, archive: Archive, name: str, upstream: int, faults: bool) -> Server:
        datadir = self.base / name
        port = ws_basebackup(self.primary, datadir, self.standby_conf(archive, name, upstream, faults))
        srv = Server("walswitch", datadir, port, name)
        self.servers.append(srv)
        self.start(srv)
        return srv

    def start(self, srv: Server) -> None:
        ws_start(srv, wait_ready=srv.role != "primary", timeout=self.cluster.timeout_s)

    def stop(self, srv: Server, mode: str) -> None:
        srv.remember_processes()
        ws("stop", "-D", str(srv.datadir), "-m", mode, "-t", str(self.cluster.timeout_s), check=False,
           timeout=self.cluster.timeout_s + 10)
        wait_for(lambda: not server_processes(srv.datadir), 10, f"{srv.role} processes to exit")

    def promote_standby2(self) -> None:
        ws("promote", "-D", str(self.standby2.datadir), "-t", str(self.cluster.timeout_s),
           timeout=self.cluster.timeout_s + 10)
        wait_for(lambda: ws_status(self.standby2.datadir).get("mode") == "primary", self.cluster.timeout_s,
                 "the promoted standby to run as a primary")

    def sample(self) -> tuple[int | None, int | None]:
        from xlog.lsn import parse_lsn
        st = ws_status(self.standby.datadir)
        rcv, rep = st.get("receive_lsn"), st.get("replay_lsn")
        return (parse_lsn(rcv) if rcv else None), (parse_lsn(rep) if rep else None)

    def streaming(self) -> bool:
        st = ws_status(self.standby.datadir)
        return st.get("walreceiver_state") == "streaming" and st.get("recovery_state") == "streaming"

    def arm_kill(self, role: str, point: str) -> None:
        from utils.inject import arm
        arm(str(self.standby.datadir), point, "kill")

    def stream_news(self) -> tuple[float | None, float | None]:
        started = killed = None
        for e in read_events(str(self.standby.datadir)):
            if e.get("kind") == "walreceiver_connect":
                started = e["ts"]
            elif e.get("kind") == "inject":
                killed = e["ts"]
        return started, killed

    def disarm_all(self) -> None:
        import shutil
        for srv in self.servers:
            shutil.rmtree(srv.datadir / "inject", ignore_errors=True)

    def events(self) -> list[dict]:
        from walswitch.compare.trace import walswitch_trace
        return walswitch_trace(self.standby.datadir, [s.datadir for s in self.servers if s is not self.standby])

    def teardown(self) -> None:
        self.disarm_all()
        super().teardown()

    def leaks(self) -> list[str]:
        from shmem.names import list_objects, remove_objects
        problems = super().leaks()
        for srv in self.servers:
            objs = list_objects(str(srv.datadir))
            if objs:
                problems.append(f"{srv.role}: shared memory/semaphores left: {sorted(objs)}")
                remove_objects(str(srv.datadir))
        return problems

    def force_cleanup(self) -> None:
        for srv in self.servers:
            with contextlib.suppress(Exception):
                ws_stop(srv)

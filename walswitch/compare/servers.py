"""Temporary servers (walswitch and PostgreSQL 15) for ``walswitch compare``/``soak`` and the benchmarks.

Moved here from bench/common.py (which re-exports it) so that the product's
comparison and the benchmarks start servers the same way.  Also: timing,
medians, percentiles.

Servers are context managers: leaving the ``with`` block, normally or through
an exception (run.py turns SIGTERM/SIGHUP into one), stops the server with an
immediate shutdown, then kills whatever process of it is still alive and, for
walswitch, unlinks its shared memory and semaphores.  What had to be killed
or unlinked is recorded in ``LEFTOVERS`` so that the results say so.

PostgreSQL's server tools refuse root: when we are root they run as the
``postgres`` user (``runuser``), in directories that user owns.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

PGBIN = Path("/usr/lib/postgresql/15/bin")
WALSWITCH = [sys.executable, "-m", "walswitch.cli"]

# What cleanup had to kill or unlink (each entry one line); run.py reports it.
LEFTOVERS: list[str] = []


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- small helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list; NaN if empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ratio(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        return float("nan")


def now() -> float:
    return time.monotonic()


def parse_lsn(s: str | None) -> int | None:
    if not s:
        return None
    hi, lo = s.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(v: int) -> str:
    return f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - not observable yet
            last = e
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def _postgres_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool (as the postgres user when we are root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(argv, **kw)


def give_to_postgres(path: Path, mode: int = 0o755) -> None:
    ids = _postgres_ids()
    if ids:
        os.chown(path, *ids)
    os.chmod(path, mode)


# The checkout `walswitch` runs from (``python -m walswitch.cli`` in that directory); None: this one.
# bench/pgbench_tps.py --before points it at an older checkout to measure both in one run.
CODE_ROOT: Path | None = None


def ws(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([*WALSWITCH, *args], cwd=CODE_ROOT, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise BenchError(f"walswitch {' '.join(args)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


@contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    """A scratch directory the postgres user owns (so PostgreSQL can create its data directories there)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    give_to_postgres(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- process bookkeeping
def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _reap(procs: list[psutil.Process], label: str, timeout: float = 10.0) -> None:
    """Wait for the processes to go; kill (and record) those that do not."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if _alive(p)]
    if alive:
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                LEFTOVERS.append(f"{label}: killed leftover pid {p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- servers
@dataclass
class Server:
    kind: str          # "walswitch" or "postgresql"
    datadir: Path
    port: int
    role: str = "primary"
    base: Path | None = None
    procs: list[psutil.Process] = field(default_factory=list)

    def dsn(self, **kw: Any) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": "postgres",
                 "connect_timeout": 10, **kw}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def dsn_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "postgres"]

    def connect(self, autocommit: bool = True, **kw: Any):
        import psycopg2
        c = psycopg2.connect(self.dsn(**kw))
        c.autocommit = autocommit
        return c

    def query(self, sql: str, args: Any = None) -> list[tuple]:
        with contextlib.closing(self.connect()) as c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def log_tail(self, n: int = 20) -> str:
        if self.kind == "walswitch":
            return tail(self.datadir / "log" / "walswitch.log", n)
        return tail(self.datadir / "server.log", n)

    def remember_processes(self) -> None:
        """Snapshot the server's process tree (for the leftover check at stop)."""
        pid = self.postmaster_pid()
        if pid:
            seen = {p.pid for p in self.procs}
            self.procs += [p for p in _tree(pid) if p.pid not in seen]

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


def _append_conf(path: Path, conf: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for k, v in conf.items():
            if isinstance(v, bool):
                v = "on" if v else "off"
            if isinstance(v, str):
                v = "'" + v.replace("'", "''") + "'"
            f.write(f"{k} = {v}\n")


# -- walswitch
def ws_init(datadir: Path, port: int, segsize_mb: int, conf: dict | None = None) -> None:
    ws("init", "-D", str(datadir), "--wal-segsize", str(segsize_mb), "-p", str(port), "-U", "postgres")
    _append_conf(datadir / "walswitch.conf", {"fsync": True, "synchronous_commit": "on", **(conf or {})})


def ws_start(srv: Server, wait_ready: bool = True, timeout: float = 60) -> None:
    args = ["start", "-D", str(srv.datadir), "--detach", "-t", str(timeout)]
    if not wait_ready:
        args.append("--no-wait-ready")
    p = ws(*args, check=False, timeout=timeout + 10)
    srv.remember_processes()
    if p.returncode:
        raise BenchError(f"walswitch start -D {srv.datadir} failed: {p.stderr.strip()}\n{srv.log_tail()}")


def ws_stop(srv: Server) -> None:
    srv.remember_processes()
    ws("stop", "-D", str(srv.datadir), "-m", "immediate", check=False, timeout=90)
    _reap(srv.procs, f"walswitch {srv.role} {srv.datadir.name}")
    srv.procs = []
    try:
        from shmem.names import remove_objects
        n = remove_objects(str(srv.datadir))
        if n:
            LEFTOVERS.append(f"walswitch {srv.role} {srv.datadir.name}: unlinked {n} shared-memory objects")
    except Exception as e:  # noqa: BLE001 - cleanup must go on
        LEFTOVERS.append(f"walswitch {srv.role} {srv.datadir.name}: shared-memory cleanup failed: {e!r}")


@contextmanager
def walswitch_server(datadir: Path, port: int, role: str = "primary", wait_ready: bool = True) -> Iterator[Server]:
    """Start an already-initialised walswitch data directory; stop it (and everything it forked) at exit."""
    srv = Server("walswitch", datadir, port, role)
    try:
        ws_start(srv, wait_ready=wait_ready)
        yield srv
    finally:
        ws_stop(srv)


@contextmanager
def walswitch_primary(base: Path, name: str = "ws", conf: dict | None = None,
                      segsize_mb: int = 16) -> Iterator[Server]:
    datadir = base / name
    port = free_port()
    ws_init(datadir, port, segsize_mb, conf)
    with walswitch_server(datadir, port) as srv:
        yield srv


def ws_basebackup(primary: Server, datadir: Path, conf: dict | None = None) -> int:
    """``walswitch basebackup -R`` into datadir, then the standby's own settings; returns its port."""
    port = free_port()
    ws("basebackup", "-d", primary.dsn(), "-D", str(datadir), "-R", timeout=300)
    _append_conf(datadir / "walswitch.conf", {"port": port, "archive_mode": "off", **(conf or {})})
    return port


def ws_status(datadir: Path) -> dict:
    """``walswitch status --json``, read in-process (same code, no interpreter start per poll)."""
    from walswitch.status import collect
    return collect(str(datadir))


# -- PostgreSQL 15
def pg_init(base: Path, datadir: Path, port: int, segsize_mb: int, conf: dict | None = None) -> None:
    r = as_postgres([str(PGBIN / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                     f"--wal-segsize={segsize_mb}", "-N"])
    if r.returncode:
        raise BenchError(f"initdb failed: {r.stderr.strip()}")
    _append_conf(datadir / "postgresql.auto.conf", {
        "port": port, "listen_addresses": "127.0.0.1", "unix_socket_directories": str(base),
        "fsync": True, "synchronous_commit": "on", **(conf or {})})


def pg_start(srv: Server, wait: bool = True) -> None:
    r = as_postgres([str(PGBIN / "pg_ctl"), "-D", str(srv.datadir), "-l", str(srv.datadir / "server.log"),
                     "-w" if wait else "-W", "-t", "120", "start"])
    if wait:
        srv.remember_processes()
    if r.returncode:
        raise BenchError(f"pg_ctl start -D {srv.datadir} failed: {r.stderr.strip()}{r.stdout.strip()}\n"
                         f"{srv.log_tail()}")


def pg_stop(srv: Server) -> None:
    srv.remember_processes()
    if srv.postmaster_pid():
        as_postgres([str(PGBIN / "pg_ctl"), "-D", str(srv.datadir), "-m", "immediate", "-w", "-t", "60", "stop"])
    _reap(srv.procs, f"postgresql {srv.role} {srv.datadir.name}")
    srv.procs = []


@contextmanager
def pg_server(datadir: Path, port: int, role: str = "primary", wait: bool = True) -> Iterator[Server]:
    srv = Server("postgresql", datadir, port, role)
    try:
        pg_start(srv, wait=wait)
        yield srv
    finally:
        pg_stop(srv)


@contextmanager
def pg_primary(base: Path, name: str = "pg", conf: dict | None = None, segsize_mb: int = 16) -> Iterator[Server]:
    datadir = base / name
    port = free_port()
    pg_init(base, datadir, port, segsize_mb, conf)
    with pg_server(datadir, port) as srv:
        srv.query("CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value text)")
        yield srv


def pg_basebackup(primary: Server, base: Path, datadir: Path, conf: dict | None = None) -> int:
    """``pg_basebackup -R`` into datadir, then the standby's own settings; returns its port."""
    r = as_postgres([str(PGBIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                     "-D", str(datadir), "-R", "-X", "stream", "-c", "fast"])
    if r.returncode:
        raise BenchError(f"pg_basebackup failed: {r.stderr.strip()}")
    port = free_port()
    _append_conf(datadir / "postgresql.auto.conf", {
        "port": port, "unix_socket_directories": str(base), "archive_mode": "off", **(conf or {})})
    return port


def psql(server: Server, sql: str) -> str:
    r = subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *server.dsn_args(), "-c", sql],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise BenchError(f"psql: {r.stderr}")
    return r.stdout.strip()


def copytree_as(src: Path, dst: Path, postgres: bool) -> None:
    """Copy a data directory (cp -a keeps owners and modes)."""
    r = subprocess.run(["cp", "-a", str(src), str(dst)], capture_output=True, text=True)
    if r.returncode:
        raise BenchError(f"cp -a {src} {dst}: {r.stderr.strip()}")
    if postgres:
        os.chmod(dst, 0o700)


# ---------------------------------------------------------------- signals
def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into an exception so that every ``finally`` (server stop) runs."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)

"""Test helpers: real walswitch servers in temporary directories.

A ``Node`` is a data directory plus the commands a person would type
(``walswitch init/start/stop``) and the checks tests share.  Nothing is
mocked: servers are real processes on 127.0.0.1, with real shared memory.
Every wait is bounded and polls an observable condition (a state in shared
memory, a file, a query result), never a bare sleep.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
PGBIN = Path("/usr/lib/postgresql/15/bin")


class WaitTimeout(AssertionError):
    pass


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the condition may not be observable yet
            last_exc = e
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}" +
                      (f" (last error: {last_exc!r})" if last_exc else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walswitch(*args: str, check: bool = True, timeout: float = 120.0, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "walswitch.cli", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"walswitch {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def walswitch_processes(datadir: str | None = None) -> list[psutil.Process]:
    """Processes of walswitch servers (of one data directory if given)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not cmd.startswith("walswitch: "):
            continue
        if datadir is None:
            out.append(p)
            continue
        # Every process of a server works in its data directory (the postmaster
        # changes there before it forks), orphans included; the postmaster ancestor
        # covers a process whose directory cannot be read.
        try:
            if p.cwd() == datadir:
                out.append(p)
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        try:
            root = _postmaster_of(p)
        except psutil.NoSuchProcess:
            continue
        if root is not None and " ".join(root.cmdline()) == f"walswitch: postmaster -D {datadir}":
            out.append(p)
    return out


def _postmaster_of(p: psutil.Process) -> psutil.Process | None:
    cur: psutil.Process | None = p
    while cur is not None:
        cmd = " ".join(cur.cmdline())
        if cmd.startswith("walswitch: postmaster"):
            return cur
        cur = cur.parent()
    return None


def shm_objects(datadir: str | None = None) -> list[str]:
    from shmem.names import list_objects
    return list_objects(datadir)


class Node:
    def __init__(self, base: Path, name: str, port: int | None = None):
        self.name = name
        self.base = base
        self.datadir = str((base / name).resolve())
        self.port = port or free_port()
        self.pid: int | None = None

    # ---------------------------------------------------------------- life cycle
    def init(self, segsize_mb: int = 1, **conf: Any) -> "Node":
        walswitch("init", "-D", self.datadir, "--wal-segsize", str(segsize_mb), "-p", str(self.port), "-U", "postgres")
        self.set_conf(**conf)
        return self

    def set_conf(self, **conf: Any) -> None:
        if not conf:
            return
        with open(os.path.join(self.datadir, "walswitch.conf"), "a", encoding="utf-8") as f:
            for k, v in conf.items():
                if isinstance(v, bool):
                    v = "on" if v else "off"
                if isinstance(v, str):
                    v = "'" + v.replace("'", "''") + "'"
                f.write(f"{k} = {v}\n")

    def start(self, *extra: str, check: bool = True, timeout: float = 60.0,
              inject: str | None = None, wait_ready: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("WALSWITCH_INJECT", None)
        if inject:
            env["WALSWITCH_INJECT"] = inject
        if not wait_ready:
            extra = (*extra, "--no-wait-ready")
        p = walswitch("start", "-D", self.datadir, "--detach", "-t", str(timeout), *extra, check=check,
                      timeout=timeout + 10, env=env)
        if p.returncode == 0:
            from postmaster import pidfile
            info = pidfile.read(self.datadir)
            self.pid = info.pid if info else None
        return p

    def stop(self, mode: str = "fast", check: bool = True) -> subprocess.CompletedProcess:
        p = walswitch("stop", "-D", self.datadir, "-m", mode, check=check)
        return p

    def is_running(self) -> bool:
        from postmaster import pidfile
        return pidfile.is_running(pidfile.read(self.datadir))

    def processes(self) -> list[psutil.Process]:
        return walswitch_processes(self.datadir)

    def child(self, role: str) -> psutil.Process:
        for p in self.processes():
            if " ".join(p.cmdline()).startswith(f"walswitch: {role}"):
                return p
        raise LookupError(role)

    def kill9(self, role: str = "postmaster") -> int:
        p = self.child(role)
        p.send_signal(signal.SIGKILL)
        return p.pid

    def kill9_all(self) -> None:
        """kill -9 the postmaster and every child at once (a machine-crash stand-in)."""
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=5)

    # ---------------------------------------------------------------- SQL
    def dsn(self, **kw: Any) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": "postgres",
                 "connect_timeout": 10, **kw}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, autocommit: bool = True, **kw: Any):
        c = psycopg2.connect(self.dsn(**kw))
        c.autocommit = autocommit
        return c

    def sql(self, query: str, args: Any = None) -> list[tuple]:
        with contextlib.closing(self.connect()) as c, c.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def psql(self, query: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", query],
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"psql failed: {p.stderr}")
        return p

    # ---------------------------------------------------------------- observation
    def status(self) -> dict:
        from walswitch.status import collect
        return collect(self.datadir)

    def events(self, kind: str | None = None) -> list[dict]:
        from utils.events import read_events
        evs = read_events(self.datadir)
        return [e for e in evs if kind is None or e.get("kind") == kind]

    def log_text(self) -> str:
        """The server log: the rotated files, oldest first, then log/walswitch.log (so it only grows)."""
        from utils.elog import log_files
        out: list[str] = []
        for _ in range(10):
            files = log_files(self.datadir)
            try:
                out = [Path(p).read_text(errors="replace") for p in files]
            except FileNotFoundError:       # rotated between the listing and the read: read again
                continue
            if log_files(self.datadir) == files:
                break
        return "".join(out)

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        wait_for(lambda: needle in self.log_text(), timeout, f"log line {needle!r} in {self.name}")

    def dump(self) -> tuple[dict[str, str], str]:
        from storage.kvstore import dump
        from xlog.lsn import format_lsn
        rows, lsn = dump(self.datadir)
        return dict(rows), format_lsn(lsn)

    def flush_lsn(self) -> int:
        from xlog.lsn import parse_lsn
        return parse_lsn(self.sql("SELECT pg_current_wal_lsn()")[0][0])

    # ---------------------------------------------------------------- teardown
    def cleanup(self) -> list[str]:
        """Stop whatever is left; return what was found left over (for the leak check)."""
        problems = []
        if self.is_running():
            r = self.stop("immediate", check=False)
            if r.returncode != 0:
                problems.append(f"{self.name}: immediate stop failed: {r.stderr.strip()}")
        leftover = self.processes()
        if leftover:
            problems.append(f"{self.name}: processes left: {[ ' '.join(p.cmdline()) for p in leftover]}")
            for p in leftover:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(leftover, timeout=5)
        objs = shm_objects(self.datadir)
        if objs:
            problems.append(f"{self.name}: shared memory/semaphores left: {objs}")
            from shmem.names import remove_objects
            remove_objects(self.datadir)
        return problems


def pg_tool(name: str) -> str:
    path = PGBIN / name
    if not path.exists():
        import pytest
        pytest.skip(f"{path} is not installed (make test installs PostgreSQL 15)")
    return str(path)


def as_postgres(argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as the postgres user (they refuse root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def share_with_postgres(path: str | Path) -> None:
    """Make a test directory readable by the postgres user (tests run as root)."""
    if os.geteuid() != 0:
        return
    p = Path(path)
    while p != p.parent:
        with contextlib.suppress(OSError):
            os.chmod(p, os.stat(p).st_mode | 0o055)
        if str(p) in ("/tmp", "/"):
            break
        p = p.parent


def run_in_thread(fn):
    """Run fn in a daemon thread; returns (thread, result dict with "value" or "error")."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result

"""``make demo``: a primary, an archive and a standby under load; the primary restarts and the link is cut.

Everything lives in a temporary directory that is removed at the end, even on
Ctrl-C or failure:

- a walswitch primary (1 MB WAL segments, ``archive_mode = on``, ``cp`` as
  archive_command) with four psycopg2 writer threads that reconnect when it
  goes away;
- a standby made by ``walswitch basebackup -R``, with ``restore_command`` from
  the archive, whose ``primary_conninfo`` goes through the link proxy
  (walswitch/linkproxy.py), and ``standby_wal_coordination`` from
  ``--coordination``.

On a schedule (proportional to ``--seconds``) the primary is stopped
(immediate) and restarted ``--fault-seconds`` later, then the link is cut for
as long; each fault is announced (``>>``) as it happens.  Once a second:

- on a terminal, a ``rich`` table redrawn in place (walswitch/demo_view.py):
  per process (the primary and its walsender, the link, the standby's
  postmaster, startup and walreceiver) its state, the received, flushed and
  replayed positions and the lag behind the primary;
- otherwise (a pipe, a file, a test), one plain line with the phase and the
  standby's state (what ``walswitch status -D DIR --json`` reports) against
  the primary's flush position.

At the end: a summary of the standby's transitions from
``DIR/log/events.jsonl``; the load stops, the standby catches up (bounded
wait) and its ``kv`` rows are compared with the primary's (``RESULT:``);
everything is cleaned up; last, the tables ``walswitch compare`` prints,
for this run (same trace, figures and table code).  Exit code 0 only if the
rows are equal.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import psutil
import psycopg2
from rich.console import Console
from rich.live import Live

from utils.events import read_events
from walswitch.compare import invariants, report
from walswitch.demo_view import PrimaryView, comparison, observe, process_table
from walswitch.linkproxy import LinkProxy
from walswitch.status import COORDINATION, collect
from xlog.lsn import format_lsn, parse_lsn

N_WRITERS = 4
KEYS_PER_WRITER = 5000
CATCH_UP_TIMEOUT = 60.0
PRINT_LOCK = threading.Lock()


CONSOLE = Console(highlight=False)


def say(text: str = "") -> None:
    """One line; on a terminal it is printed above the live table (rich keeps the table at the bottom)."""
    with PRINT_LOCK:
        if CONSOLE.is_terminal:
            CONSOLE.print(text, markup=False)
        else:
            print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ws(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    """Run ``walswitch ARGS`` (the same CLI a person would type)."""
    try:
        return subprocess.run([sys.executable, "-m", "walswitch.cli", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, "", f"timed out after {timeout:g} s")


def must(r: subprocess.CompletedProcess, what: str) -> None:
    if r.returncode:
        raise DemoError(f"{what} failed: {(r.stderr or r.stdout).strip()}")


class DemoError(RuntimeError):
    pass


def dsn(port: int, timeout: int = 2) -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout={timeout}"


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except Exception:  # noqa: BLE001 - not observable yet
            v = None
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def lsn_or_zero(text: str | None) -> int:
    return parse_lsn(text) if text else 0


# ------------------------------------------------------------------ load
class Load:
    """Four writer threads upserting ``kv`` rows; each reconnects while the primary is away."""

    def __init__(self, port: int, rate: float):
        self.port = port
        self.rate = rate                      # commits/s over all writers; 0 = as fast as they can
        self.stop = threading.Event()
        self.commits = [0] * N_WRITERS
        self.errors = [0] * N_WRITERS
        self.threads = [threading.Thread(target=self.writer, args=(i,), name=f"writer-{i}", daemon=True)
                        for i in range(N_WRITERS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def writer(self, idx: int) -> None:
        conn = None
        n = 0
        interval = N_WRITERS / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(dsn(self.port))
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO kv VALUES (%s, %s)",
                                (f"w{idx}-{n % KEYS_PER_WRITER:04d}", f"{n}-" + "x" * 200))
                n += 1
                self.commits[idx] += 1
                if interval:
                    next_at = max(next_at + interval, time.monotonic() - 1.0)
                    self.stop.wait(max(0.0, next_at - time.monotonic()))
            except psycopg2.Error:
                self.errors[idx] += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                self.stop.wait(0.2)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def finish(self, timeout: float = 15.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.1, deadline - time.monotonic()))

    def total(self) -> int:
        return sum(self.commits)


# ------------------------------------------------------------------ the primary, seen from the demo
class PrimaryProbe:
    """The primary's flush LSN once a second (``pg_current_wal_lsn()``), reconnecting when it is back."""

    def __init__(self, port: int):
        self.port = port
        self.conn = None

    def flush_lsn(self) -> int | None:
        try:
            if self.conn is None:
                self.conn = psycopg2.connect(dsn(self.port, 1))
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_current_wal_lsn()")
                lsn = parse_lsn(cur.fetchone()[0])
        except psycopg2.Error:
            self.close()
            return None
        return lsn

    def walsender(self) -> dict[str, Any] | None:
        """The standby's row of the primary's ``pg_stat_replication`` (None: no walsender for it)."""
        if self.conn is None:
            return None
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pid, state, write_lsn, flush_lsn, replay_lsn, replay_lag "
                            "FROM pg_stat_replication WHERE application_name = 'demo_standby'")
                row = cur.fetchone()
        except psycopg2.Error:
            self.close()
            return None
        if row is None:
            return None
        pid, state, write, flush, replay, lag = row
        return {"pid": pid, "state": state, "write_lsn": lsn_or_zero(write) or None,
                "flush_lsn": lsn_or_zero(flush) or None, "replay_lsn": lsn_or_zero(replay) or None,
                "replay_lag": lag.total_seconds() if hasattr(lag, "total_seconds") else None}

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


# ------------------------------------------------------------------ schedule
class Scheduler(threading.Thread):
    """Stops and restarts the primary, then cuts and restores the link, at the planned times."""

    def __init__(self, t0: float, plan: list[tuple[float, str]], actions: dict[str, Callable[[], None]]):
        super().__init__(name="scheduler", daemon=True)
        self.t0 = t0
        self.plan = plan
        self.actions = actions
        self.phase = "steady"
        self.done_at: list[tuple[float, str]] = []
        self.began_wall: dict[str, float] = {}   # step -> wall-clock time it began (for the figures)
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        for at, step in self.plan:
            if self.stop.wait(max(0.0, self.t0 + at - time.monotonic())):
                return
            self.began_wall[step] = time.time()
            try:
                self.actions[step]()
            except Exception as e:  # noqa: BLE001 - reported, and the demo fails
                self.error = f"{step}: {e}"
                say(f"  !! {self.error}")
                return
            now = time.monotonic() - self.t0
            self.phase = step
            self.done_at.append((now, step))
            say(f"  >> {now:5.1f} s  {step}")


def make_plan(seconds: float, fault: float) -> list[tuple[float, str]]:
    stop_at = max(2.0, 0.15 * seconds)
    cut_at = max(stop_at + 2 * fault, 0.55 * seconds)
    return [(stop_at, "primary stopped"), (stop_at + fault, "primary back"),
            (cut_at, "link cut"), (cut_at + fault, "link restored")]


# ------------------------------------------------------------------ watching the run
class Watch:
    """Once a second: the primary's flush position and walsender, the commit rate, the lag samples."""

    def __init__(self, t0: float, sched: "Scheduler", probe: "PrimaryProbe", load: "Load") -> None:
        self.t0, self.sched, self.probe, self.load = t0, sched, probe, load
        self.last_commits, self.last_t, self.rate = 0, t0, 0.0
        self.lags: list[float] = []          # pg_stat_replication.replay_lag samples, seconds

    def primary(self) -> PrimaryView:
        flush = self.probe.flush_lsn()
        ws = self.probe.walsender() if flush is not None else None
        if ws and ws.get("replay_lag") is not None:
            self.lags.append(ws["replay_lag"])
        now = time.monotonic()
        commits = self.load.total()
        self.rate = (commits - self.last_commits) / max(1e-3, now - self.last_t)
        self.last_commits, self.last_t = commits, now
        return PrimaryView(flush, ws)


def live_loop(seconds: float, watch: Watch, sdir: str, proxy: LinkProxy) -> None:
    """Terminal: the process table redrawn in place each second; faults are printed above it (say)."""
    with Live(console=CONSOLE, auto_refresh=False, transient=False) as live:
        for tick in range(1, int(seconds) + 1):
            time.sleep(max(0.0, watch.t0 + tick - time.monotonic()))
            p = watch.primary()
            sched = watch.sched
            title = (f"{time.monotonic() - watch.t0:4.0f} s of {seconds:.0f}   phase: {sched.phase}   "
                     f"{watch.rate:.0f} commits/s")
            last = f"last fault: {sched.done_at[-1][1]} at {sched.done_at[-1][0]:.1f} s" if sched.done_at else ""
            live.update(process_table(observe(sdir, p, proxy.mode), title, last), refresh=True)


def plain_loop(seconds: float, watch: Watch, sdir: str) -> None:
    """Not a terminal (logs, tests): one plain line per second."""
    head = (f"{'t':>4} {'phase':<15} {'recovery_state':<16} {'source':<7} {'walreceiver':<11} "
            f"{'replay_lsn':>10} {'receive_lsn':>11} {'flush_lsn':>10} {'lag_bytes':>10} {'commits/s':>9}")
    say(head)
    for tick in range(1, int(seconds) + 1):
        time.sleep(max(0.0, watch.t0 + tick - time.monotonic()))
        at = time.monotonic() - watch.t0      # when this line's sample was taken
        try:
            st = collect(sdir)
        except Exception as e:  # noqa: BLE001 - e.g. shared memory being recreated
            st = {"recovery_state": f"({type(e).__name__})"}
        p = watch.primary()
        replay = lsn_or_zero(st.get("replay_lsn"))
        lag = f"{p.flush - replay:,}" if p.flush is not None and replay else None
        say(f"{at:4.0f} {watch.sched.phase:<15} {st.get('recovery_state') or '-':<16} "
            f"{st.get('wal_source') or '-':<7} {st.get('walreceiver_state') or '-':<11} "
            f"{fmt(st.get('replay_lsn'), 10)} {fmt(st.get('receive_lsn'), 11)} "
            f"{format_lsn(p.flush) if p.flush is not None else 'down':>10} {fmt(lag, 10)} "
            f"{watch.rate:9.0f}")


def print_tables(doc: dict) -> None:
    """The tables of ``walswitch compare`` (walswitch/compare/report.py), on a terminal or as plain text."""
    with PRINT_LOCK:
        if CONSOLE.is_terminal:
            for t in report.tables(doc):
                CONSOLE.print(t)
        else:
            print(report.table_text(doc), end="", flush=True)


# ------------------------------------------------------------------ the summary
def summarize(standby_dir: str, since_mono: float) -> list[str]:
    evs = read_events(standby_dir)
    out = []
    trans: collections.Counter = collections.Counter()
    trans_during: collections.Counter = collections.Counter()
    src: collections.Counter = collections.Counter()
    for e in evs:
        if e.get("kind") == "recovery_state":
            trans[(e["from"], e["to"])] += 1
            if e.get("mono", 0) >= since_mono:
                trans_during[(e["from"], e["to"])] += 1
        elif e.get("kind") == "wal_source":
            src[(e["from"], e["to"])] += 1
    out.append("recovery_state transitions (from -> to: count, of which under load):")
    for (a, b), n in trans.items():
        out.append(f"  {a:>17} -> {b:<17} {n:4d}  {trans_during[(a, b)]:4d}")
    if src:
        out.append("wal_source transitions: " + ", ".join(f"{a}->{b} {n}" for (a, b), n in src.items()))
    restores = [e for e in evs if e.get("kind") == "restore"]
    ok = sum(1 for e in restores if e.get("ok"))
    by = collections.Counter(e.get("by", "?") for e in restores)
    hist = sum(1 for e in restores if str(e.get("file", "")).endswith(".history"))
    out.append(f"restore_command calls: {len(restores)} ({ok} ok, {len(restores) - ok} failed; "
               f"{hist} for .history files; by " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())) + ")"
               if restores else "restore_command calls: 0")
    kinds = collections.Counter(e.get("kind") for e in evs)
    out.append(f"walreceiver: {kinds['walreceiver_connect']} connects, {kinds['walreceiver_disconnect']} "
               f"disconnects, {kinds['walreceiver_connect_failed']} failed connection attempts")
    seg_archive = sum(1 for e in evs if e.get("kind") == "segment_fetched" and e.get("source") == "archive")
    seg_stream = sum(1 for e in evs if e.get("kind") == "segment_completed" and e.get("source") == "stream")
    out.append(f"segments: {seg_archive} restored from the archive, {seg_stream} completed by streaming")
    if kinds["crash_restart"]:
        out.append(f"crash-restarts of the standby: {kinds['crash_restart']}")
    return out


# ------------------------------------------------------------------ clean-up of what we started
def kill_leftovers(datadir: str) -> int:
    """SIGKILL any process of the server in ``datadir`` still alive (its postmaster and children)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            # The postmaster's title, or its command line before it set the title.
            if (cmd.startswith("walswitch: postmaster") and f"-D {datadir}" in cmd) or \
                    (cmd.endswith(f"walswitch.cli start -D {datadir}") and p.pid != os.getpid()):
                procs += [p, *p.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
    from shmem.names import remove_objects
    remove_objects(datadir)
    return len(procs)


def stop_server(datadir: str) -> None:
    if not os.path.exists(os.path.join(datadir, "postmaster.pid")):
        kill_leftovers(datadir)
        return
    r = ws("stop", "-D", datadir, "-m", "fast", "-t", "20", timeout=30)
    if r.returncode:
        ws("stop", "-D", datadir, "-m", "immediate", "-t", "10", timeout=20)
    if kill_leftovers(datadir):
        say(f"  (killed processes left by {datadir})")


# ------------------------------------------------------------------ main
def fmt(v: Any, width: int) -> str:
    return f"{'-' if v is None else v:>{width}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m walswitch.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90, help="length of the run under load (default 90)")
    ap.add_argument("--fault-seconds", type=float, default=None,
                    help="how long the primary stays down and the link stays cut "
                         "(default min(10, seconds/5))")
    ap.add_argument("--coordination", choices=COORDINATION, default="stop_walreceiver",
                    help="the standby's standby_wal_coordination (default stop_walreceiver)")
    ap.add_argument("--rate", type=float, default=0,
                    help="commits per second over the four writers (default 0: as fast as they can)")
    args = ap.parse_args(argv)
    if args.seconds < 8:
        ap.error("--seconds must be at least 8")
    fault = args.fault_seconds if args.fault_seconds is not None else min(10.0, args.seconds / 5)
    plan = make_plan(args.seconds, fault)
    if plan[-1][0] >= args.seconds:
        ap.error(f"--fault-seconds {fault:g} does not fit in --seconds {args.seconds:g}")

    def on_term(_signo, _frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    base = tempfile.mkdtemp(prefix="walswitch-demo-")
    pdir, sdir, archive = (os.path.join(base, n) for n in ("primary", "standby", "archive"))
    pport, sport = free_port(), free_port()
    servers: list[str] = []
    proxy: LinkProxy | None = None
    load: Load | None = None
    sched: Scheduler | None = None
    probe = PrimaryProbe(pport)
    ok = False
    watch: Watch | None = None
    catch_up: float | None = None           # for the comparison table
    data_bad: list[str] = []
    try:
        # ---- set-up: primary, archive, base backup, standby behind the proxy
        os.makedirs(archive)
        must(ws("init", "-D", pdir, "--wal-segsize", "1", "-p", str(pport), "-U", "postgres"), "walswitch init")
        with open(os.path.join(pdir, "walswitch.conf"), "a") as f:
            f.write(f"archive_mode = on\narchive_command = 'cp %p {archive}/%f'\ncheckpoint_timeout = 30s\n")
        servers.append(pdir)
        must(ws("start", "-D", pdir, "--detach", "-t", "60"), "starting the primary")
        proxy = LinkProxy(pport)
        say(f"primary  on 127.0.0.1:{pport}   data {pdir}\narchive  {archive}\n"
            f"link     127.0.0.1:{proxy.port} -> 127.0.0.1:{pport} (the standby's primary_conninfo)")
        with contextlib.closing(psycopg2.connect(dsn(pport))) as c:
            c.autocommit = True
            with c.cursor() as cur:
                for i in range(200):
                    cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"seed-{i:03d}", "s" * 100))
                cur.execute("SELECT pg_switch_wal()")
        must(ws("basebackup", "-d", dsn(pport, 10), "-D", sdir, "-R"), "walswitch basebackup")
        with open(os.path.join(sdir, "walswitch.conf"), "a") as f:
            f.write(f"\n# the demo: the standby reaches the primary through the link proxy\n"
                    f"port = {sport}\narchive_mode = off\n"
                    f"primary_conninfo = '{dsn(proxy.port, 2)} application_name=demo_standby'\n"
                    f"restore_command = 'cp {archive}/%f %p'\nwal_retrieve_retry_interval = '1s'\n"
                    f"standby_wal_coordination = {args.coordination}\n")
        servers.append(sdir)
        must(ws("start", "-D", sdir, "--detach", "--no-wait-ready", "-t", "60"), "starting the standby")
        say(f"standby  on 127.0.0.1:{sport}   data {sdir}   standby_wal_coordination = {args.coordination}")
        # Ready when the standby replayed what the primary has (streaming, or whatever its mode does).
        ready_at = probe.flush_lsn() or 0
        if not wait_until(lambda: lsn_or_zero(collect(sdir)["replay_lsn"]) >= ready_at, 60):
            raise DemoError(f"the standby did not replay up to the primary's {format_lsn(ready_at)} within 60 s: "
                            f"{collect(sdir)}")
        probe.close()
        say("plan: " + "  ".join(f"{at:.0f} s {step}" for at, step in plan) + f"  {args.seconds:.0f} s end")
        say()

        # ---- the run
        def stop_primary() -> None:
            must(ws("stop", "-D", pdir, "-m", "immediate", "-t", "20", timeout=30), "stopping the primary")

        def start_primary() -> None:
            must(ws("start", "-D", pdir, "--detach", "-t", "40", timeout=50), "restarting the primary")

        load = Load(pport, args.rate)
        t0 = time.monotonic()
        mono0 = t0
        sched = Scheduler(t0, plan, {"primary stopped": stop_primary, "primary back": start_primary,
                                     "link cut": proxy.cut, "link restored": proxy.resume})
        load.start()
        sched.start()
        watch = Watch(t0, sched, probe, load)
        if CONSOLE.is_terminal:
            live_loop(args.seconds, watch, sdir, proxy)
        else:
            plain_loop(args.seconds, watch, sdir)

        # ---- the summary
        sched.stop.set()
        sched.join(60)
        load.finish()
        say()
        say(f"== summary: standby_wal_coordination = {args.coordination}, {args.seconds:g} s under load ==")
        say("schedule: " + ", ".join(f"{step} at {at:.1f} s" for at, step in sched.done_at))
        say(f"load: {load.total()} commits by {N_WRITERS} writers, {sum(load.errors)} failed statements "
            f"or connection attempts while the primary was away")
        pc = proxy.counters()
        say(f"link: {pc['accepted']} connections forwarded, {pc['closed_by_cut']} closed by the cut, "
            f"{pc['refused']} refused while cut, {pc['upstream_failed']} with the primary down; "
            f"{pc['bytes_down']:,} bytes to the standby")
        for line in summarize(sdir, mono0):
            say(line)
        if sched.error or sched.is_alive():
            raise DemoError(f"the schedule did not complete: {sched.error or 'still running'}")

        # ---- the check: the standby's data equals the primary's
        say()
        say("== check: the standby's data equals the primary's ==")
        target = probe.flush_lsn()
        if target is None:
            raise DemoError("the primary is not reachable for the final check")
        t_wait = time.monotonic()
        caught = wait_until(lambda: lsn_or_zero(collect(sdir)["replay_lsn"]) >= target, CATCH_UP_TIMEOUT)
        st = collect(sdir)
        if not caught:
            raise DemoError(f"the standby did not replay up to {format_lsn(target)} within {CATCH_UP_TIMEOUT:g} s "
                            f"(replay_lsn {st['replay_lsn']}, recovery_state {st['recovery_state']})")
        catch_up = time.monotonic() - t_wait
        say(f"load stopped; primary flushed up to {format_lsn(target)}; the standby replayed it after "
            f"{catch_up:.1f} s (replay_lsn {st['replay_lsn']}, {st['recovery_state']}, "
            f"{st['walreceiver_state']})")
        with contextlib.closing(psycopg2.connect(dsn(pport, 10))) as c, c.cursor() as cur:
            cur.execute("SELECT key, value FROM kv")
            prim = dict(cur.fetchall())
        with contextlib.closing(psycopg2.connect(dsn(sport, 10))) as c, c.cursor() as cur:
            cur.execute("SELECT key, value FROM kv")
            stby = dict(cur.fetchall())
        data_bad = invariants.data_equal(prim, stby)
        missing = sorted(set(prim) - set(stby))
        extra = sorted(set(stby) - set(prim))
        differ = sorted(k for k in set(prim) & set(stby) if prim[k] != stby[k])
        if missing or extra or differ:
            say(f"RESULT: DIFFERENT: {len(missing)} rows missing on the standby {missing[:3]}, "
                f"{len(extra)} extra {extra[:3]}, {len(differ)} with other values {differ[:3]}")
        else:
            say(f"RESULT: equal ({len(prim)} rows on the primary and the standby)")
            ok = True
    except DemoError as e:
        say(f"demo: error: {e}")
    except KeyboardInterrupt:
        say("\ndemo: interrupted")
    finally:
        # Clean-up, not to be interrupted by a second Ctrl-C or a SIGTERM.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if sched is not None:
                sched.stop.set()
            if load is not None:
                load.finish()
            probe.close()
            if sched is not None:
                sched.join(60)
            for d in reversed(servers):
                stop_server(d)
            if proxy is not None:
                proxy.close()
            doc = None
            if sched is not None and sched.done_at:
                # From the standby's events, read once every process has stopped writing them.
                returns = [{"label": step, "t": sched.began_wall[step],
                            "server": "primary" if step == "primary back" else None}
                           for _at, step in sched.done_at if step in ("primary back", "link restored")]
                try:
                    doc = comparison(sdir, pdir, args.coordination, returns, watch.lags if watch else [],
                                     catch_up, data_bad)
                except Exception as e:  # noqa: BLE001 - the table is a report: say why it is missing
                    say(f"demo: no comparison table: {type(e).__name__}: {e}")
            shutil.rmtree(base, ignore_errors=True)
            say(f"cleaned up: servers stopped, link proxy closed, {base} removed")
            if doc is not None:
                say()
                say("== the comparison table of `walswitch compare` for this run ==")
                print_tables(doc)
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The latency trace: when each process handed a commit's WAL on, for ``bench.lag`` and the tests.

``lag_trace_sample = N`` (0, the default, is off) makes every process of a
server note, at each hand-over on the replication path, the WAL position it
has reached and the time (``time.monotonic_ns()``); the backend notes every
Nth commit record.  A commit ending at E then went through a stage at the
time of the first note of that stage with a position >= E, because each
stage's positions only grow (one stream per process and timeline).  The
stages, in the order a commit meets them (who notes it)::

    commit_inserted     backend    the commit record is in the WAL buffers (sampled commits only)
    primary_flushed     backend    fdatasync done, flush position published, walsenders' latches set
    walsender_woken     walsender  it saw a new flush position (after a wait, or on its next round)
    sent                walsender  the XLogData message is handed to the socket
    received            walreceiver the message was read from the socket
    written             walreceiver pwrite into the segment file done
    flushed             walreceiver fdatasync done
    published           walreceiver flushed_lsn in shared memory, the startup's latch set
    startup_woken       startup    it saw a new flushed_lsn
    decoded             startup    the commit record is decoded (commit records only)
    applied             startup    applied and replay_lsn published: a hot-standby query sees it
    reply_sent          walreceiver a status update with apply >= E is handed to libpq
    primary_updated     walsender  the reply is in pg_stat_replication (replay_lsn, replay_lag)

A note is taken just before the process makes its step visible to the next
one (stores the position in shared memory, sets a latch, writes to the
socket), so that the stages of one commit never come out of order.

Cost: when off, each site tests one attribute.  When on, a note is one
tuple appended to a list; the list goes to ``DIR/pg_lagtrace/<role>.<pid>``
(17 bytes a note) when the process is about to sleep, at least every half
second, and at exit, without fsync (a trace is a measurement, not data).

Clocks.  On one host every process reads the same ``CLOCK_MONOTONIC``, so
notes of the primary and the standby compare directly.  Each file starts
with a (monotonic, realtime) pair taken together; ``load(..., same_host=
False)`` moves each file's notes onto the wall clock through that pair, so
on two hosts the cross-host stages (sent -> received, reply_sent ->
primary_updated) are as good as the hosts' clock synchronisation (NTP:
typically 0.1-1 ms on a LAN; PTP better) and the stages within a host stay
exact.
"""
from __future__ import annotations

import bisect
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

STAGES = ("commit_inserted", "primary_flushed", "walsender_woken", "sent", "received", "written", "flushed",
          "published", "startup_woken", "decoded", "applied", "reply_sent", "primary_updated")
CODE = {name: i for i, name in enumerate(STAGES)}
DIRNAME = "pg_lagtrace"
_NOTE = struct.Struct("<BQq")          # stage, lsn, monotonic ns
_HEAD = struct.Struct("<8sqq")         # magic, monotonic ns, realtime ns
MAGIC = b"WSLAGTR1"
FLUSH_EVERY_NS = 500_000_000


class LagTrace:
    """A process's notes.  ``on`` is the cheap test every site makes first."""

    def __init__(self, datadir: str | None = None, role: str = "", sample: int = 0) -> None:
        self.on = bool(datadir) and sample > 0
        self.sample = sample
        self.role = role
        self.notes: list[tuple[int, int, int]] = []
        self.path: Path | None = None
        self.last_flush = time.monotonic_ns()
        self.commits = 0
        if self.on:
            d = Path(datadir) / DIRNAME
            d.mkdir(mode=0o700, exist_ok=True)
            self.path = d / f"{role}.{os.getpid()}"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_HEAD.pack(MAGIC, time.monotonic_ns(), time.time_ns()))

    def note(self, stage: str, lsn: int) -> None:
        now = time.monotonic_ns()
        self.notes.append((CODE[stage], lsn, now))
        if now - self.last_flush >= FLUSH_EVERY_NS:
            self.flush()

    def note_commit(self, lsn: int) -> None:
        """Every ``sample``-th commit record the backend inserts."""
        self.commits += 1
        if self.commits % self.sample == 0:
            self.note("commit_inserted", lsn)

    def idle(self) -> None:
        """The process is about to sleep: write what it noted (off the hand-over path)."""
        if self.notes:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic_ns()
        if not self.notes or self.path is None:
            return
        notes, self.notes = self.notes, []
        data = b"".join(_NOTE.pack(*n) for n in notes)
        try:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:       # someone cleared the trace directory: start the file again
                self.path.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, _HEAD.pack(MAGIC, time.monotonic_ns(), time.time_ns()))
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.on = False         # a full disk ends the trace, never the process
            logging.getLogger("walswitch").warning('lag trace stopped: could not write "%s": %s', self.path, e)


OFF = LagTrace()


def start(datadir: str, role: str, config) -> LagTrace:
    """The process's trace, from its settings (``config`` maps names to values)."""
    try:
        sample = int(config.get("lag_trace_sample", 0) or 0)
    except (TypeError, ValueError):
        sample = 0
    return LagTrace(datadir, role, sample) if sample > 0 else OFF


# ------------------------------------------------------------------ reading
@dataclass
class Commit:
    lsn: int
    times_ns: dict[str, int]      # stage -> time; only stages found


def _read(path: Path, same_host: bool) -> list[tuple[int, int, int]]:
    data = path.read_bytes()
    if len(data) < _HEAD.size:
        return []
    magic, mono, real = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f'"{path}" is not a lag trace file')
    shift = 0 if same_host else real - mono
    n = (len(data) - _HEAD.size) // _NOTE.size
    return [(s, lsn, t + shift) for s, lsn, t in _NOTE.iter_unpack(data[_HEAD.size:_HEAD.size + n * _NOTE.size])]


def load(datadirs: list[str | Path], same_host: bool = True) -> list[Commit]:
    """Join the notes of the given data directories (a primary and its standby) into sampled commits."""
    by_stage: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(STAGES))}
    for d in datadirs:
        tdir = Path(d) / DIRNAME
        if not tdir.is_dir():
            continue
        for p in sorted(tdir.iterdir()):
            for s, lsn, t in _read(p, same_host):
                by_stage[s].append((t, lsn))
    # Per stage: notes in time order, and the running maximum position, so that "first note at or past E"
    # is a bisect even when two processes of the same stage (a restarted walsender) overlap a little.
    index: dict[int, tuple[list[int], list[int]]] = {}
    for s, notes in by_stage.items():
        notes.sort()
        times, reach, hi = [], [], -1
        for t, lsn in notes:
            hi = max(hi, lsn)
            times.append(t)
            reach.append(hi)
        index[s] = (times, reach)
    commits = []
    for t0, lsn in by_stage[CODE["commit_inserted"]]:
        found = {"commit_inserted": t0}
        for name in STAGES[1:]:
            times, reach = index[CODE[name]]
            lo = bisect.bisect_left(times, t0)
            # first note at or after the commit's insertion whose running maximum reaches the commit
            i = bisect.bisect_left(reach, lsn, lo=lo)
            if i < len(times):
                found[name] = times[i]
        commits.append(Commit(lsn, found))
    return commits


def complete(commits: list[Commit]) -> list[Commit]:
    """The commits that went through every stage (the last ones of a run may not have)."""
    return [c for c in commits if len(c.times_ns) == len(STAGES)]


def stage_table(commits: list[Commit]) -> list[dict]:
    """Per stage: p50 and p99 of the time from the previous stage (ms) and its share of the mean total."""
    full = complete(commits)
    if not full:
        return []
    rows = []
    total_mean = sum(c.times_ns[STAGES[-1]] - c.times_ns[STAGES[0]] for c in full) / len(full)
    for prev, name in zip(STAGES, STAGES[1:]):
        d = sorted((c.times_ns[name] - c.times_ns[prev]) / 1e6 for c in full)
        rows.append({"stage": name, "from": prev, "p50_ms": _pct(d, 50), "p99_ms": _pct(d, 99),
                     "share": (sum(d) / len(d)) * 1e6 / total_mean if total_mean > 0 else 0.0})
    tot = sorted((c.times_ns[STAGES[-1]] - c.times_ns[STAGES[0]]) / 1e6 for c in full)
    rows.append({"stage": "total", "from": STAGES[0], "p50_ms": _pct(tot, 50), "p99_ms": _pct(tot, 99),
                 "share": 1.0})
    vis = sorted((c.times_ns["applied"] - c.times_ns["commit_inserted"]) / 1e6 for c in full)
    rows.append({"stage": "applied (commit-to-visible)", "from": STAGES[0], "p50_ms": _pct(vis, 50),
                 "p99_ms": _pct(vis, 99), "share": float("nan")})
    return rows


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]

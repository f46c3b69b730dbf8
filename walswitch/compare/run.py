"""One run: a scenario's steps on one system, then catch-up, the figures and the invariants.

``run_scenario(scenario, system, base, progress)`` returns the run's result
(a JSON-ready dict: figures.py's figures, ``violations``, ``timeline``).
Order:

1. set-up: the archive, the primary, the link proxy, the standby(s);
   wait until the standby streams (bounded by ``cluster.timeout_s``);
2. the steps, each announced to ``progress`` as it begins; a sampler
   thread records positions and the primary's replay lag meanwhile;
3. heal: whatever the scenario left broken is put right (link restored,
   archive back to normal, primary started) so that catch-up can be measured;
   the load stops; ``catch_up_s`` is the time until the standby replayed
   everything the primary flushed;
4. the checks: commits, data, segments (invariants.py); the servers are
   stopped (fast) and what they left behind is a violation too;
5. the figures, from the trace the servers recorded (events or log).

Every wait is bounded; whatever happens, every server is stopped and the
proxy closed before the function returns.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Protocol

import psycopg2

from walswitch.compare import invariants
from walswitch.compare.archive import Archive
from walswitch.compare.figures import figures
from walswitch.compare.load import Load
from walswitch.compare.scenario import Scenario, Step
from walswitch.compare.servers import BenchError, percentile, wait_for
from walswitch.compare.systems import System
from walswitch.compare.timeline import Sampler, record
from walswitch.linkproxy import LinkProxy



class Progress(Protocol):
    def step(self, index: int, total: int, text: str) -> None: ...

    def note(self, text: str) -> None: ...


class Quiet:
    def step(self, index: int, total: int, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class LagProbe:
    """The primary's ``pg_stat_replication.replay_lag`` through one connection, reopened when needed."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.conn = None
        self.port = None

    def __call__(self) -> float | None:
        port = self.system.primary.port
        try:
            if self.conn is None or self.port != port:
                self.close()
                self.conn = psycopg2.connect(self.system.primary.dsn(connect_timeout=1))
                self.conn.autocommit = True
                self.port = port
            with self.conn.cursor() as cur:
                cur.execute("SELECT replay_lag FROM pg_stat_replication WHERE application_name = 'standby'")
                row = cur.fetchone()
        except psycopg2.Error:
            self.close()
            return None
        if not row or row[0] is None:
            return None
        v = row[0]
        return v.total_seconds() if hasattr(v, "total_seconds") else None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class Run:
    def __init__(self, scenario: Scenario, system: System, base: Path, progress: Progress) -> None:
        self.sc = scenario
        self.c = scenario.cluster
        self.system = system
        self.base = base
        self.progress = progress
        self.archive = Archive(base / "archive", postgres=system.kind == "postgresql")
        self.proxy: LinkProxy | None = None
        self.load: Load | None = None
        self.marks: list[tuple[float, str]] = []
        self.returns: list[dict] = []
        self.primary_up = True
        self.violations: list[str] = []
        self.broken_at = 0.0             # when the last step that breaks streaming began
        self.catch_ups: list[float] = []  # how long each `wait caught_up` took

    # ------------------------------------------------------------ the steps
    def do(self, step: Step) -> None:
        if step.verb in ("primary", "link", "promote") or (step.verb == "kill" and not step.point):
            if not (step.verb == "link" and step.action == "restore"):
                self.broken_at = time.time()
        getattr(self, "step_" + step.verb)(step)

    def step_load(self, s: Step) -> None:
        if s.action == "on":
            self.load.on()
        elif s.action == "off":
            self.load.off()
        else:
            was = self.load.running
            self.load.on()
            time.sleep(s.seconds)      # the scenario's own duration, not a wait for an event
            if not was:
                self.load.off()

    def step_wait(self, s: Step) -> None:
        if s.action == "streaming":
            wait_for(self.streaming_again, self.c.timeout_s, "the standby to stream", interval=0.1)
        elif s.action == "caught_up":
            t = time.time()
            self.wait_caught_up()
            self.catch_ups.append(time.time() - t)
        else:
            time.sleep(s.seconds)      # the scenario's own duration

    def step_primary(self, s: Step) -> None:
        if s.action in ("stop", "restart"):
            self.system.primary_stop(s.mode or "fast")
            self.primary_up = False
        if s.action in ("start", "restart"):
            t = time.time()
            self.system.primary_start()
            self.primary_up = True
            self.returns.append({"label": s.text, "t": t, "server": self.system.primary.role})

    def step_link(self, s: Step) -> None:
        if s.action == "cut":
            self.proxy.cut()
        elif s.action == "stall":
            self.proxy.stall()
        elif s.action == "restore":
            self.proxy.resume()
            self.returns.append({"label": s.text, "t": time.time(), "server": None})
        else:
            for _ in range(s.count):
                self.proxy.cut()
                time.sleep(s.ms / 2000.0)
                self.proxy.resume()
                time.sleep(s.ms / 2000.0)
            self.returns.append({"label": s.text, "t": time.time() - s.ms / 2000.0, "server": None})

    def step_archive(self, s: Step) -> None:
        if s.action == "slow":
            self.archive.slow("standby", s.ms)
        elif s.action == "fail":
            self.archive.fail("standby")
        elif s.action == "restore":
            self.archive.restore("standby", self.c.restore_latency_ms)
        else:
            name = s.segment
            if name.startswith("current"):
                name = self.system.current_segment(int(name[7:] or 0))
            self.archive.hide("standby", name)
            self.progress.note(f"hiding {name} from restore_command")

    def step_kill(self, s: Step) -> None:
        self.progress.note(self.system.kill(s.action, s.point))

    def step_promote(self, s: Step) -> None:
        t = time.time()
        new = self.system.promote()
        self.proxy.target = ("127.0.0.1", new.port)
        self.proxy.cut()           # connections to the old primary go; new ones reach the promoted one
        self.proxy.resume()
        self.load.retarget(new.port)
        self.primary_up = True
        self.returns.append({"label": s.text, "t": t, "server": new.role})

    def step_checkpoint(self, s: Step) -> None:
        self.system.query(self.system.primary, "CHECKPOINT")

    def step_switch_wal(self, s: Step) -> None:
        self.system.query(self.system.primary, "SELECT pg_switch_wal()")

    # ------------------------------------------------------------ around the steps
    def streaming_again(self) -> bool:
        """Streaming, and (re)started since the last step that could break it: a state read right
        after a kill, a cut or a stop may still be the one from before."""
        started, killed = self.system.stream_news()
        broken = max(self.broken_at, killed or 0.0)
        if broken and (started is None or started < broken):
            return False
        return self.system.streaming()

    def replayed(self) -> int:
        _rcv, rep = self.system.sample()
        return rep or 0

    def wait_caught_up(self) -> int:
        target = self.system.flush_lsn()
        wait_for(lambda: self.replayed() >= target, self.c.timeout_s,
                 f"the standby to replay up to {target:X}")
        return target

    def heal(self) -> None:
        """Undo what the scenario left broken, so that catch-up can be measured."""
        self.proxy.resume()
        self.archive.restore("standby", self.c.restore_latency_ms)
        if not self.primary_up:
            self.progress.note("starting the primary again for the catch-up")
            self.system.primary_start()
            self.primary_up = True
        if self.system.standby.postmaster_pid() is None:
            self.progress.note("starting the standby again for the catch-up")
            self.system.start(self.system.standby)

    def setup(self) -> None:
        self.progress.note("setting up primary, archive and standby")
        primary = self.system.init_primary(self.archive)
        self.proxy = LinkProxy(primary.port)
        self.system.init_standbys(self.archive, self.proxy.port)
        self.load = Load(primary.port, self.c.writers, self.c.load_rate, self.c.row_size)
        wait_for(self.system.streaming, self.c.timeout_s, "the standby to stream after set-up")

    def execute(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.system.label, "kind": self.system.kind, "error": None}
        t_end = time.time()
        lag = LagProbe(self.system)
        sampler = Sampler(self.system.sample, lag, lambda: self.load is not None and self.load.running)
        t0 = time.time()
        try:
            self.setup()
            t0 = time.time()
            with sampler:
                for i, step in enumerate(self.sc.steps, 1):
                    self.progress.step(i, len(self.sc.steps), step.text)
                    if step.is_fault:
                        self.marks.append((time.time(), step.text))
                    self.do(step)
                self.progress.step(len(self.sc.steps), len(self.sc.steps), "catching up")
                self.heal()
                self.load.off()
                t_catch = time.time()
                try:
                    target = self.wait_caught_up()
                    final = time.time() - t_catch
                except BenchError as e:
                    target, final = None, None
                    self.violations.append(f"no catch-up: {e}")
                catch_up = max(self.catch_ups) if self.catch_ups else final
                out["catch_up_s"] = None if catch_up is None else round(catch_up, 3)
                t_end = time.time()
                self.check_data(target)
        except BenchError as e:
            out["error"] = str(e)
            self.violations.append(f"run failed: {e}")
        finally:
            lag.close()
            if self.load is not None:
                self.load.off()
            replayed = sampler.latest()
            self.system.teardown()
            if self.proxy is not None:
                self.proxy.close()
        self.violations += self.system.leaks()
        self.check_segments(replayed[2] if replayed and replayed[2] else 0)
        trace = self.system.events()
        segsize = self.c.segment_size_mb * 1024 * 1024
        self.violations += invariants.double_writes(trace, segsize)
        out.update(figures(trace, segsize, self.returns))
        lags = sampler.lags
        out["lag_p50_ms"] = round(percentile(lags, 50) * 1000, 1) if lags else None
        out["lag_p99_ms"] = round(percentile(lags, 99) * 1000, 1) if lags else None
        out["lag_samples"] = len(lags)
        calls = self.archive.calls("standby")
        out["archive_calls"] = len(calls)
        out["commits"] = len(self.load.acked) if self.load else 0
        out["violations"] = self.violations
        out["timeline"] = record(sampler.samples, self.marks, trace, t0, t_end)
        return out

    def check_data(self, target: int | None) -> None:
        prim = self.system.rows(self.system.primary)
        self.violations += invariants.commits(self.load.acked, self.load.uncertain, prim)
        if target is not None:
            stby = self.system.rows(self.system.standby)
            self.violations += invariants.data_equal(prim, stby)

    def check_segments(self, replayed: int) -> None:
        sources = [s.datadir / "pg_wal" for s in self.system.servers if s is not self.system.standby]
        bad, _n = invariants.segments_identical(self.system.standby.datadir / "pg_wal",
                                                sources + [self.archive.wal], replayed,
                                                self.c.segment_size_mb * 1024 * 1024)
        self.violations += bad


def run_scenario(scenario: Scenario, system: System, base: Path, progress: Progress | None = None) -> dict:
    run = Run(scenario, system, base, progress or Quiet())
    try:
        return run.execute()
    finally:
        system.force_cleanup()



"""The latency trace (utils/lagtrace.py): every stage of a traced commit is noted, in pipeline order.

No timing is asserted (speed belongs to ``python -m bench.lag``); what is checked is that each
hand-over from the primary's commit to the primary's ``pg_stat_replication`` is seen, for each
sampled commit, at or after the one before it, and that the trace costs nothing when it is off.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.cluster import wait_for
from tests.invariants import wait_caught_up
from utils import lagtrace


def traced(primary, standby) -> list[lagtrace.Commit]:
    """The sampled commits that went through every stage, as noted so far."""
    return lagtrace.complete(lagtrace.load([primary.datadir, standby.datadir]))


@pytest.mark.timeout(120)
def test_every_stage_is_noted_in_order(nodes):
    primary = nodes.primary(lag_trace_sample=2)
    standby = nodes.standby(primary, lag_trace_sample=1, wal_receiver_status_interval="1s")
    wait_for(lambda: standby.status().get("walreceiver_state") == "streaming", 60, "standby streaming")
    # contextlib.closing, not psycopg2's ``with conn`` (which wraps the block in one transaction)
    with contextlib.closing(primary.connect()) as c, c.cursor() as cur:
        for i in range(40):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"k{i}", "v"))
    wait_caught_up(primary, standby)
    # Notes reach the files every half second: wait for the commits to come out whole.
    def fifteen() -> list[lagtrace.Commit] | None:
        c = traced(primary, standby)
        return c if len(c) >= 15 else None
    commits = wait_for(fifteen, 30, "15 traced commits with every stage")
    sampled = lagtrace.load([primary.datadir, standby.datadir])
    assert 18 <= len(sampled) <= 22            # every 2nd of the 40 commits (and nothing else committed)
    for c in commits:
        times = [c.times_ns[s] for s in lagtrace.STAGES]
        assert times == sorted(times), {s: c.times_ns[s] - times[0] for s in lagtrace.STAGES}
    rows = lagtrace.stage_table(commits)
    assert [r["stage"] for r in rows[:len(lagtrace.STAGES) - 1]] == list(lagtrace.STAGES[1:])
    assert abs(sum(r["share"] for r in rows[:len(lagtrace.STAGES) - 1]) - 1.0) < 1e-6
    for d in (primary.datadir, standby.datadir):
        tdir = Path(d) / lagtrace.DIRNAME
        assert oct(tdir.stat().st_mode & 0o777) == "0o700"
        assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in tdir.iterdir())


@pytest.mark.timeout(120)
def test_off_by_default(nodes):
    primary = nodes.primary()
    primary.psql("INSERT INTO kv VALUES ('a', 'b')")
    assert not (Path(primary.datadir) / lagtrace.DIRNAME).exists()
    assert lagtrace.start(primary.datadir, "backend", {"lag_trace_sample": 0}) is lagtrace.OFF

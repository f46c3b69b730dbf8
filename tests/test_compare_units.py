"""walswitch compare/soak without servers: scenario files, the step vocabulary, soak schedules written
back as scenarios, the transition sequences, PostgreSQL log lines mapped onto our names, and the
double-write invariant on hand-made traces."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from walswitch.compare import invariants, pglog, scenario, soak, trace
from walswitch.compare.figures import fetched_twice, restore_figures, to_streaming

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"steady", "restart", "outage", "flap", "slow-archive", "archive-gap", "timeline", "kills",
            "outage-short"}


def test_shipped_scenarios_load_and_round_trip():
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    names = {scenario.load(f).name for f in files}
    assert REQUIRED <= names
    for f in files:
        sc = scenario.load(f)
        again = scenario.loads(scenario.dumps(sc))
        assert again.steps == sc.steps and again.cluster == sc.cluster, f
    kills = {s.action for s in scenario.load(ROOT / "scenarios" / "kills.toml").steps if s.verb == "kill"}
    assert kills == {"startup", "walreceiver", "postmaster", "walsender"}


@pytest.mark.parametrize("text", [
    "load 3", "load on", "load off", "wait 0.5", "wait streaming", "wait caught_up", "primary stop -m immediate",
    "primary start", "primary restart -m fast", "link cut", "link restore", "link stall", "link flap 3 500",
    "archive slow 200", "archive fail", "archive hide current+1", "archive hide 000000010000000000000003",
    "archive restore", "kill startup", "kill walreceiver at before_flush", "kill startup at before_install",
    "kill postmaster", "kill walsender", "promote", "checkpoint", "switch_wal"])
def test_every_step_parses_to_its_canonical_text(text):
    step = scenario.parse_step(text)
    assert scenario.parse_step(step.text) == step
    assert step.text == text


@pytest.mark.parametrize("text, error", [
    ("jump 3", "unknown step 'jump'"),
    ("wait soon", "SECONDS must be a number"),
    ("primary stop -m rude", "-m takes smart, fast, immediate"),
    ("link flap 0", "COUNT >= 1"),
    ("archive hide next", "SEGMENT must be"),
    ("kill backend", "kill takes one of"),
    ("kill walsender at before_write", "walsender has no injection point"),
    ("kill startup at", "at most 'at POINT'"),
    ("checkpoint now", "takes no argument"),
])
def test_bad_steps_say_what_is_wrong(text, error):
    with pytest.raises(scenario.ScenarioError, match=error):
        scenario.parse_step(text)


def test_bad_files_name_the_step_and_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('steps = ["load on", "wait x"]\n')
    with pytest.raises(scenario.ScenarioError, match=r"bad.toml: step 2: step 'wait x'"):
        scenario.load(f)
    f.write_text('steps = []\n[cluster]\nsegment_size = 1\n')
    with pytest.raises(scenario.ScenarioError, match="unknown cluster key 'segment_size'"):
        scenario.load(f)
    f.write_text('steps = ["promote"]\n')
    with pytest.raises(scenario.ScenarioError, match="standbys = 2"):
        scenario.load(f)
    f.write_text('steps = [\n')
    with pytest.raises(scenario.ScenarioError, match="not valid TOML"):
        scenario.load(f)


def test_a_soak_seed_is_one_schedule_and_its_file_replays_it():
    a, b = soak.schedule(42, {"concurrent_guard": "off"}), soak.schedule(42, {"concurrent_guard": "off"})
    assert a.steps == b.steps and a.cluster == b.cluster
    assert soak.schedule(43).steps != a.steps
    text = soak.replay_file(a, "concurrent", ["segment X written by two fetchers"])
    assert "seed 42" in text and "--approaches concurrent" in text
    back = scenario.loads(text)
    assert back.steps == a.steps and back.cluster.settings == {"concurrent_guard": "off"}
    kinds = {soak.fault_kind(s) for n in range(200) for s in soak.schedule(n).steps} - {None}
    assert {"kill startup at a point", "kill walreceiver at a point", "kill postmaster", "link cut", "link flap",
            "primary stop", "archive hide", "archive fail", "archive slow"} <= kinds


def test_compress_counts_repeated_cycles():
    seq = ["a→s"] + ["s→a", "a→s"] * 7
    assert trace.compressed_text(seq) == "(a→s, s→a)×7, a→s"
    assert trace.compressed_text(["x", "x", "x", "y"]) == "x×3, y"
    assert trace.compressed_text([]) == "-"


def _log_line(t: dt.datetime, pid: int, level: str, msg: str) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} UTC [{pid}] {level}:  {msg}"


def test_postgresql_log_lines_map_onto_our_names(tmp_path):
    t0 = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.timezone.utc)
    lines = [
        (0.0, "LOG", "entering standby mode"),
        (0.1, "LOG", 'restored log file "000000010000000000000007" from archive'),
        (0.2, "DEBUG", 'could not restore file "000000010000000000000008" from archive: child process exited '
                       'with exit code 1'),
        (0.3, "DEBUG", "switched WAL source from archive to stream after failure"),
        (0.4, "LOG", "started streaming WAL from primary at 0/8000000 on timeline 1"),
        (2.0, "FATAL", "could not receive data from WAL stream: server closed the connection unexpectedly"),
        (2.1, "DEBUG", "switched WAL source from stream to archive after failure"),
        (2.2, "DEBUG", 'could not restore file "00000002.history" from archive: child process exited with '
                       'exit code 1'),
        (2.3, "DEBUG", "switched WAL source from archive to stream after failure"),
        (2.4, "FATAL", 'could not connect to the primary server: connection to server at "127.0.0.1", port 5 '
                       'failed: Connection refused'),
        (3.0, "LOG", "started streaming WAL from primary at 0/8000000 on timeline 1"),
    ]
    log = tmp_path / "server.log"
    log.write_text("\n".join(_log_line(t0 + dt.timedelta(seconds=s), 7, lvl, m) for s, lvl, m in lines)
                   + "\n\tThis probably means the server terminated abnormally\n")
    tr = pglog.parse_log(log)
    assert [s for _, s in trace.states(tr)] == ["archive_recovery", "wait_retry", "streaming", "retry_archive",
                                                "wait_retry", "streaming"]
    assert trace.transitions(trace.sources(tr)) == ["archive→stream", "stream→archive", "archive→stream"]
    r = restore_figures(tr)
    assert (r["restore_calls"], r["restore_segment"], r["restore_history"], r["restore_failed"]) == (3, 2, 1, 2)
    assert to_streaming(tr, t0.timestamp() + 2.5) == pytest.approx(0.5, abs=0.01)
    assert [e["start_lsn"] for e in tr if e["kind"] == "stream_start"] == [0x8000000, 0x8000000]


def test_a_stream_lost_at_once_is_not_streaming_again():
    """A stream of the old timeline that the promoted primary ends at the switch point is not a return to
    streaming: the figure waits for a stream that lasts (MIN_STREAM_S), here the one of the new timeline."""
    tr = [{"t": 10.0, "kind": "recovery_state", "to": "wait_retry"},
          {"t": 11.0, "kind": "stream_start", "start_lsn": 0x100000},
          {"t": 11.0, "kind": "recovery_state", "to": "streaming"},
          {"t": 11.1, "kind": "stream_lost", "flushed_lsn": 0x12C130},
          {"t": 11.1, "kind": "recovery_state", "to": "wait_retry"},
          {"t": 14.0, "kind": "stream_start", "start_lsn": 0x100000},
          {"t": 14.0, "kind": "recovery_state", "to": "streaming"},
          {"t": 20.0, "kind": "stream_lost", "flushed_lsn": None}]
    assert to_streaming(tr, 10.0) == pytest.approx(4.0)
    assert to_streaming(tr[:3], 10.0) == pytest.approx(1.0)   # never lost: it counts


SEG = 1024 * 1024
S1, S2 = "000000010000000000000001", "000000010000000000000002"


def _t(*entries):
    return [{"t": float(i), "server": "standby", **e} for i, e in enumerate(entries)]


def test_double_writes_are_found_in_traces():
    # The walreceiver streamed S1 whole; the startup restored S1 and went on (no private copy): two writers.
    over = _t({"kind": "stream_start", "start_lsn": SEG, "role": "walreceiver"},
              {"kind": "segment_completed", "file": S1, "role": "walreceiver"},
              {"kind": "restore", "file": S1, "ok": True, "by": "startup", "role": "startup"},
              {"kind": "restore", "file": S2, "ok": False, "by": "startup", "role": "startup"})
    assert invariants.double_writes(over, SEG)
    # The same with the guard on: the copy is kept private.
    kept = over[:3] + _t({"kind": "restore_kept_private", "file": S1, "role": "startup"})
    assert not invariants.double_writes(kept, SEG)
    # The walreceiver replaces a segment the startup had restored whole (guard off).
    replaced = _t({"kind": "restore", "file": S1, "ok": True, "by": "startup", "role": "startup"},
                  {"kind": "segment_replaced", "file": S1, "role": "walreceiver"})
    assert invariants.double_writes(replaced, SEG)
    # Restored while the walreceiver was writing it, which then completes it.
    under = _t({"kind": "stream_start", "start_lsn": SEG + 100, "role": "walreceiver"},
               {"kind": "restore", "file": S1, "ok": True, "by": "startup", "role": "startup"},
               {"kind": "segment_completed", "file": S1, "role": "walreceiver"})
    assert invariants.double_writes(under, SEG)
    # A walreceiver replacing its own partial file (base backup, reconnect) is not a double write.
    own = _t({"kind": "stream_start", "start_lsn": SEG, "role": "walreceiver"},
             {"kind": "segment_replaced", "file": S1, "role": "walreceiver"})
    assert not invariants.double_writes(own, SEG)


def test_fetched_twice_counts_a_restart_below_what_was_flushed():
    tr = _t({"kind": "stream_start", "start_lsn": SEG},
            {"kind": "stream_lost", "flushed_lsn": SEG + 5000},
            {"kind": "stream_start", "start_lsn": SEG},
            {"kind": "segment_completed", "file": S1},
            {"kind": "restore", "file": S1, "ok": True, "by": "startup", "bytes": SEG})
    assert fetched_twice(tr, SEG) == 5000 + SEG


def test_commits_and_data_checks():
    assert invariants.commits({"w0-1", "w0-2"}, {"w0-3"}, {"w0-1": "v", "w0-2": "v", "w0-3": "v"}) == []
    assert "lost" in invariants.commits({"w0-1", "w0-2"}, set(), {"w0-1": "v"})[0]
    assert "no writer committed" in invariants.commits(set(), set(), {"w9-9": "v"})[0]
    assert invariants.data_equal({"a": "1"}, {"a": "1"}) == []
    assert "1 missing" in invariants.data_equal({"a": "1", "b": "2"}, {"a": "1"})[0]

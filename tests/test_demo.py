"""``make demo`` (python -m walswitch.demo): a short run ends by itself, summarizes, finds the data equal,
ends with the comparison table of ``walswitch compare``, and leaves nothing behind, also when interrupted
with Ctrl-C (SIGINT).  Without a terminal it prints plain lines; on a terminal (a real pty) the live
process table is drawn in place by ``rich``."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from tests.cluster import ROOT, shm_objects, walswitch_processes


def demo_dirs(out: str) -> tuple[str, list[str]]:
    m = re.search(r"data (\S+)/primary", out)
    assert m, f"no primary data directory in the output:\n{out}"
    base = m.group(1)
    return base, [os.path.join(base, "primary"), os.path.join(base, "standby")]


def assert_nothing_left(out: str) -> None:
    base, datadirs = demo_dirs(out)
    assert "cleaned up" in out
    assert not os.path.exists(base), f"{base} was not removed"
    for d in datadirs:
        assert not walswitch_processes(d), f"processes of {d} left"
        assert not shm_objects(d), f"shared memory of {d} left"


def run_demo(args: list[str], timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "walswitch.demo", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # let it clean up, then report
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the demo did not end within {timeout} s:\n{out}")
    return proc.returncode, out


@pytest.mark.timeout(120)
def test_demo_short_run():
    code, out = run_demo(["--seconds", "25"], timeout=75)
    assert code == 0, out
    # Every phase was shown live, one line per second.
    for phase in ("steady", "primary stopped", "primary back", "link cut", "link restored"):
        assert re.search(rf"^\s+\d+ {phase}\s", out, re.M), f"no live line in phase {phase!r}:\n{out}"
    live = re.findall(r"^\s*(\d+) (?:steady|primary|link)", out, re.M)
    assert [int(t) for t in live] == list(range(1, 26)), out
    # The summary, from the standby's events.
    assert "== summary" in out
    assert re.search(r"streaming -> retry_archive\s+\d+", out), out
    assert re.search(r"restore_command calls: \d+ \(\d+ ok, \d+ failed", out), out
    m = re.search(r"walreceiver: (\d+) connects", out)
    assert m and int(m.group(1)) >= 3, out  # first connect, after the restart, after the cut
    assert re.search(r"^RESULT: equal \(\d+ rows", out, re.M), out
    assert_nothing_left(out)
    # Last, the tables of `walswitch compare` for this run (walswitch/compare/report.py), as plain text.
    tail = out[out.index("cleaned up"):]
    assert "\x1b[" not in out, "terminal escapes in the plain output"
    assert "demo (this run): figures (medians)" in tail, out
    row = re.search(r"^│ stop_walreceiver\s*│\s*(\d+)\+(\d+) \((\d+)\)\s*│", tail, re.M)
    assert row, tail
    assert int(row.group(1)) >= 1 and int(row.group(3)) >= 1, tail   # restored segments, and failed calls
    assert re.search(r"^│ stop_walreceiver\s*│.*(archive→stream|stream→archive)", tail, re.M), tail
    assert tail.rstrip().endswith("┘"), f"the output does not end with the table:\n{tail}"


@pytest.mark.timeout(90)
def test_demo_ctrl_c_cleans_up():
    proc = subprocess.Popen([sys.executable, "-m", "walswitch.demo", "--seconds", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.match(r"^\s+2 steady", line):
                break
        assert any(re.match(r"^\s+2 steady", x) for x in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(lines) + rest
    assert proc.returncode == 1, out
    assert "interrupted" in out
    assert_nothing_left(out)


def run_in_pty(args: list[str], timeout: float, cols: int = 150, rows: int = 50) -> tuple[int, str]:
    """Run the demo with a pseudo-terminal as stdin/stdout/stderr; all it wrote, escapes included."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "walswitch.demo", *args], cwd=ROOT, stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:        # EIO: the last writer closed the pty
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        t.join(5)
        pytest.fail(f"the demo did not end within {timeout} s:\n{b''.join(chunks).decode(errors='replace')}")
    finally:
        t.join(10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.mark.timeout(120)
def test_demo_on_a_terminal_draws_the_process_table_in_place():
    code, raw = run_in_pty(["--seconds", "12"], timeout=90)
    text = ANSI.sub("", raw)
    assert code == 0, text
    assert "\x1b[" in raw, "no terminal output: rich did not see a terminal"
    # Drawn in place: rich moves the cursor up over the previous table (CSI n A) to redraw it.
    assert re.search(r"\x1b\[\d*A", raw), text
    for proc in ("primary walsender", "standby postmaster", "startup", "walreceiver", "link"):
        assert re.search(rf"│ {proc}\s+│", text), f"no row for {proc}:\n{text}"
    # The states: the standby streamed, the walsender streamed, faults announced above the table.
    assert re.search(r"│ startup\s+│\s*\d+\s*│ streaming \(source stream\)", text), text
    assert re.search(r"│ walreceiver\s+│\s*\d+\s*│ streaming", text), text
    assert re.search(r"│ primary walsender\s+│\s*\d+\s*│ streaming", text), text
    assert re.search(r"│ primary\s+│\s*-\s*│ down", text), text          # while it was stopped
    assert re.search(r"│ link\s+│\s*-\s*│ cut", text), text
    for fault in ("primary stopped", "primary back", "link cut", "link restored"):
        assert re.search(rf">>\s+[\d.]+ s  {fault}", text), f"{fault} not announced:\n{text}"
    assert "RESULT: equal" in text, text
    assert "demo (this run): figures (medians)" in text, text
    assert_nothing_left(text)

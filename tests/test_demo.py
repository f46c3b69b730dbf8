"""``make demo`` (python -m walswitch.demo): a short run ends by itself, summarizes, finds the data equal,
and leaves nothing behind, also when interrupted with Ctrl-C (SIGINT)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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

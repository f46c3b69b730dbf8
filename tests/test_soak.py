"""``walswitch soak`` end to end, a handful of schedules (``make bench`` runs 200 per approach, bench/soak.py).

Each case runs one random schedule (a fixed seed, so the same faults every time) on one approach through
the command line, as a person would: real servers, real faults (SIGKILLs, at injection points too, the
primary stopped, the link cut, the archive failing), the invariants checked after catch-up.  Three seeds,
one per approach, together cover kills of every standby process (at a point and not), primary stops of
both modes, the link cut, archive failure and a segment switch; about 15 s each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster import ROOT
from walswitch.compare import soak

CASES = [
    # seed 5: kill startup at before_install, kill walreceiver, link cut + switch_wal, primary stop -m fast
    ("stop_walreceiver", 5),
    # seed 4: primary stop -m immediate twice, archive fail, kill walreceiver at before_flush
    ("concurrent", 4),
    # seed 17: kill walreceiver at after_flush and at before_write, link cut, kill postmaster, checkpoint
    ("walreceiver_restores", 17),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("approach,seed", CASES)
def test_one_soak_schedule_keeps_the_invariants(tmp_path, approach, seed):
    out = tmp_path / "out"
    # The schedule's servers live under tmp_path, apart from any other soak on this machine.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "walswitch.cli", "soak", "--schedules", "1", "--seed", str(seed),
                        "--approaches", approach, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=110, env=env, stdin=subprocess.DEVNULL)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    doc = json.loads((out / "soak.json").read_text())
    res = doc["approaches"][approach]
    assert res["schedules"] == 1
    assert res["violating_seeds"] == [] and res["violations"] == [], res
    # Every fault of the schedule was injected and counted under its kind.
    expected: dict[str, int] = {}
    for st in soak.schedule(seed).steps:
        if (k := soak.fault_kind(st)):
            expected[k] = expected.get(k, 0) + 1
    assert res["faults"] == expected
    assert f"seed {seed}" in text and "invariants hold" in text, text[-4000:]
    assert not list(tmp_path.glob("walswitch-soak-*")), "the schedule's scratch directory was left behind"

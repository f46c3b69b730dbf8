"""Named fault-injection points: ``WALSWITCH_INJECT=point:action,...``.

Actions: ``kill`` (SIGKILL this process), ``error`` (raise ``InjectedError``),
``sleep:MS``, ``pause`` (block until the test releases it).  Each point fires
once per data directory (a marker file in ``DIR/inject/`` remembers it), so
that a ``kill`` does not fire again after the crash-restart it caused.

``pause`` emits an ``inject_paused`` event and waits for the file
``DIR/inject/<point>.release`` (created by the test), so a test can hold one
process at a point while it drives another: an interleaving forced, not hoped
for.  Every hit of an armed point is recorded as an ``inject`` event.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any


class InjectedError(RuntimeError):
    pass


def parse(spec: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, action = item.partition(":")
        out[point] = action or "kill"
    return out


def inject(point: str, ctx: Any, **info: Any) -> None:
    spec = os.environ.get("WALSWITCH_INJECT")
    if not spec:
        return
    action = parse(spec).get(point)
    if action is None:
        return
    d = os.path.join(ctx.datadir, "inject")
    os.makedirs(d, exist_ok=True)
    marker = os.path.join(d, point + ".fired")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        return
    ctx.events.emit("inject", point=point, action=action, **info)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "error":
        raise InjectedError(f"injected error at {point}")
    elif action.startswith("sleep:"):
        time.sleep(int(action.split(":", 1)[1]) / 1000.0)
    elif action == "pause":
        release = os.path.join(d, point + ".release")
        ctx.events.emit("inject_paused", point=point, **info)
        deadline = time.monotonic() + 300
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        ctx.events.emit("inject_released", point=point)


def release(datadir: str, point: str) -> None:
    """Test side: let a paused point go on."""
    d = os.path.join(datadir, "inject")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, point + ".release"), "w"):
        pass

"""Named fault-injection points.

A point is armed by the environment of the server (``WALSWITCH_INJECT=point:action,...``,
read by every process it forks) or at run time by a test (``arm(datadir, point, action)``,
which writes ``DIR/inject/arm``; processes re-read it when its mtime changes).

Actions: ``kill`` (SIGKILL this process), ``error`` (raise ``InjectedError``),
``sleep:MS``, ``pause`` (block until the test calls ``release``).  An armed point
fires once: a marker file ``DIR/inject/<point>.fired`` remembers it, so a
``kill`` does not fire again after the crash-restart it caused; ``arm`` removes
the marker to arm the point again.

``pause`` emits an ``inject_paused`` event and waits for
``DIR/inject/<point>.release``, so a test holds one process at a point while it
drives another: an interleaving forced, not hoped for.

Points (where the approaches hand WAL over):

=========================  ==============  =============================================
point                      process         where
=========================  ==============  =============================================
before_restore             startup / wr    before restore_command runs
after_restore              startup / wr    after the restored file is in place
before_install             startup         restored into a temporary file, not yet in pg_wal
walreceiver_start          walreceiver     before it connects
walreceiver_stop           walreceiver     on its way out
before_write, after_write  walreceiver     around writing a received chunk to its segment
before_flush               walreceiver     written, not yet fsynced
after_flush                walreceiver     fsynced, not yet published to shared memory
=========================  ==============  =============================================
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
    for item in filter(None, (s.strip() for s in spec.replace("\n", ",").split(","))):
        point, _, action = item.partition(":")
        out[point.strip()] = action.strip() or "kill"
    return out


class _Armed:
    """Per-process cache of the arm file (re-read when it changes)."""

    def __init__(self) -> None:
        self.env = parse(os.environ.get("WALSWITCH_INJECT", ""))
        self.mtime: float | None = None
        self.file: dict[str, str] = {}

    def lookup(self, datadir: str, point: str) -> str | None:
        path = os.path.join(datadir, "inject", "arm")
        try:
            m = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            m = None
            self.file = {}
        if m is not None and m != self.mtime:
            try:
                with open(path, encoding="utf-8") as f:
                    self.file = parse(f.read())
            except FileNotFoundError:
                self.file = {}
        self.mtime = m
        return self.file.get(point) or self.env.get(point)


_ARMED: _Armed | None = None   # this process's cache (rebuilt after fork by pid check)
_ARMED_PID = 0


def _armed() -> _Armed:
    global _ARMED, _ARMED_PID
    if _ARMED is None or _ARMED_PID != os.getpid():
        _ARMED, _ARMED_PID = _Armed(), os.getpid()
    return _ARMED


def inject(point: str, ctx: Any, **info: Any) -> None:
    """Called at a named point; does nothing unless the point is armed."""
    action = _armed().lookup(ctx.datadir, point)
    if action is None:
        return
    d = os.path.join(ctx.datadir, "inject")
    os.makedirs(d, exist_ok=True)
    try:
        fd = os.open(os.path.join(d, point + ".fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        return
    ctx.events.emit("inject", point=point, action=action, **{k: str(v) for k, v in info.items()})
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "error":
        raise InjectedError(f"injected error at {point}")
    elif action.startswith("sleep:"):
        time.sleep(int(action.split(":", 1)[1]) / 1000.0)
    elif action == "pause":
        release_path = os.path.join(d, point + ".release")
        ctx.events.emit("inject_paused", point=point)
        deadline = time.monotonic() + 300
        while not os.path.exists(release_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            os.unlink(release_path)
        except FileNotFoundError:
            pass
        ctx.events.emit("inject_released", point=point)


# ---------------------------------------------------------------- test side
def arm(datadir: str, point: str, action: str) -> None:
    """Arm a point of a running server (again, if it fired before)."""
    d = os.path.join(datadir, "inject")
    os.makedirs(d, exist_ok=True)
    try:
        os.unlink(os.path.join(d, point + ".fired"))
    except FileNotFoundError:
        pass
    path = os.path.join(d, "arm")
    current = {}
    try:
        with open(path, encoding="utf-8") as f:
            current = parse(f.read())
    except FileNotFoundError:
        pass
    current[point] = action
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{p}:{a}" for p, a in current.items()) + "\n")
    os.replace(tmp, path)


def disarm(datadir: str, point: str) -> None:
    path = os.path.join(datadir, "inject", "arm")
    try:
        with open(path, encoding="utf-8") as f:
            current = parse(f.read())
    except FileNotFoundError:
        return
    current.pop(point, None)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{p}:{a}" for p, a in current.items()) + "\n")
    os.replace(tmp, path)


def release(datadir: str, point: str) -> None:
    """Let a paused point go on."""
    d = os.path.join(datadir, "inject")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, point + ".release"), "w"):
        pass

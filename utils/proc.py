"""What every forked child of the postmaster shares: its context and its life cycle.

A child is a function ``main(ctx: ChildContext) -> int`` run right after
``fork``.  ``child_start`` prepares the process (title, parent-death signal,
default signal dispositions, its own event writer); ``child_exit`` flushes its
log queue and leaves with ``os._exit`` so nothing inherited from the
postmaster (atexit hooks, the logging receiver thread) runs twice.

Children notice a dead postmaster two ways, as PostgreSQL's do: the read end
of a pipe whose write end only the postmaster holds becomes readable (EOF)
when it dies, and ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux.

Exit codes follow PostgreSQL: 0 orderly, 1 FATAL (for a walreceiver: normal,
e.g. connection refused), 2 quickdie (SIGQUIT); anything else, or death by a
signal, is a crash and starts the postmaster's crash-restart cycle.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

import setproctitle

from shmem.segment import SharedState
from utils import elog
from utils.config import Config
from utils.events import EventLog

PR_SET_PDEATHSIG = 1


@dataclass
class ChildContext:
    datadir: str
    config: Config
    shared: SharedState
    role: str
    death_fd: int                      # read end of the postmaster-alive pipe
    events: EventLog
    extra: dict[str, Any] = field(default_factory=dict)   # role-specific (sockets, slot number)

    def postmaster_alive(self) -> bool:
        try:
            r, _, _ = select.select([self.death_fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return not r


def set_title(text: str) -> None:
    setproctitle.setproctitle(f"walswitch: {text}")


def child_start(ctx: ChildContext, title: str) -> None:
    """First thing a child does after fork."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    # The parent may have died between fork and prctl.
    if not ctx.postmaster_alive():
        os._exit(1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # A reload (SIGHUP) or a wake-up (SIGUSR1) must never kill a child that did not ask for them.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Until the child's own handlers are in place, a stop request is an orderly
    # exit, not a death by signal (which the postmaster would take for a crash).
    early_code = 1 if ctx.role == "startup" else 0
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, lambda *_: child_exit(early_code))
    # SIGQUIT: immediate exit without cleanup, as PostgreSQL's quickdie.
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(2))
    ctx.events = ctx.events.for_child(ctx.role)
    set_title(title)


def run_child(target: "Callable[[ChildContext], int]", ctx: ChildContext) -> int:
    """Run a child's main; with WALSWITCH_PROFILE=DIR, under cProfile into DIR/<role>-<pid>.prof.

    A developer's tool for finding where a process spends its time (``python -m
    pstats``); the profile is written when main returns, not on a kill.
    """
    out = os.environ.get("WALSWITCH_PROFILE")
    if not out:
        return target(ctx)
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(target, ctx)
    finally:
        prof.dump_stats(os.path.join(out, f"{ctx.role}-{os.getpid()}.prof"))


def child_exit(code: int) -> None:
    """Orderly exit of a child: flush the log queue, then leave without atexit hooks."""
    elog.flush_child()
    os._exit(code)

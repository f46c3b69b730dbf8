"""The three ``standby_wal_coordination`` approaches, as policies of one state machine.

startup/standby.py consults the policy at the points where the approaches
differ; everything else (states, reading, replay) is shared.  The first line
of each hook's docstring is what the README's generated table shows
(``python -m walswitch.diagram``).

* ``stop_walreceiver`` (PostgreSQL 9.0 and later): one fetcher at a time; the
  startup stops the walreceiver before it retries the archive and starts it
  again when the archive runs dry.
* ``concurrent``: the walreceiver, once started, stays and reconnects on its
  own while the startup retries the archive; both may fetch the same segment,
  so the concurrent guard (``concurrent_guard``) decides which copy wins.
* ``walreceiver_restores``: the walreceiver is the only fetcher (stream, else
  restore_command, with ``walreceiver_restore_prefetch`` segments ahead); the
  startup reads pg_wal up to what it flushed.
"""
from __future__ import annotations

from typing import Protocol


class PolicyHost(Protocol):
    """What a policy may ask of the startup's state machine (startup/standby.py's Standby)."""

    def walrcv_running(self) -> bool: ...
    def request_walreceiver(self, pos: int) -> None: ...
    def stop_walreceiver(self, reason: str) -> None: ...


class Policy:
    name = "base"
    startup_restores = True

    def __init__(self, sb: PolicyHost):
        self.sb = sb

    def before_restore(self) -> None:
        """nothing"""

    def archive_dry(self, pos: int) -> None:
        """start the walreceiver at the segment needed"""
        if not self.sb.walrcv_running():
            self.sb.request_walreceiver(pos)

    def stream_lost(self) -> None:
        """nothing: the walreceiver reconnects on its own"""

    def may_retry_archive(self) -> bool:
        """every wal_retrieve_retry_interval"""
        return True

    def timeline_changed(self) -> None:
        """A newer timeline was found: the walreceiver must restart on it."""
        self.sb.stop_walreceiver("new target timeline")


class StopWalreceiver(Policy):
    name = "stop_walreceiver"

    def before_restore(self) -> None:
        """stop the walreceiver and wait until it is gone"""
        self.sb.stop_walreceiver("restoring from archive")

    def stream_lost(self) -> None:
        """stop the walreceiver"""
        self.sb.stop_walreceiver("streaming stopped")

    def may_retry_archive(self) -> bool:
        """every wal_retrieve_retry_interval, once no walreceiver runs"""
        return not self.sb.walrcv_running()


class Concurrent(Policy):
    name = "concurrent"

    def before_restore(self) -> None:
        """nothing: both fetch; the guard decides which copy wins"""


class WalreceiverRestores(Policy):
    name = "walreceiver_restores"
    startup_restores = False

    def before_restore(self) -> None:
        """never called: the startup does not restore"""

    def archive_dry(self, pos: int) -> None:
        """start the walreceiver, which restores and streams"""
        super().archive_dry(pos)

    def stream_lost(self) -> None:
        """nothing: the walreceiver falls back to the archive itself"""

    def may_retry_archive(self) -> bool:
        """never: nothing for the startup to retry"""
        return False


POLICIES = {p.name: p for p in (StopWalreceiver, Concurrent, WalreceiverRestores)}


def make_policy(name: str, sb: PolicyHost) -> Policy:
    return POLICIES[name](sb)

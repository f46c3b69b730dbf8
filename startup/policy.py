"""The three ``standby_wal_coordination`` approaches, as policies of one state machine.

startup/standby.py consults the policy at the points where the approaches
differ; everything else (states, reading, replay) is shared:

=====================  ==============================  ==========================  ======================
hook                   stop_walreceiver (PG 9.0 on)    concurrent                  walreceiver_restores
=====================  ==============================  ==========================  ======================
startup_restores       yes                             yes                         no: only the walreceiver fetches
before_restore()       stop the walreceiver, wait      nothing (both fetch)        (never called)
archive_dry(pos)       start the walreceiver           start it once; it stays     start it (it restores and streams)
stream_lost()          stop the walreceiver            nothing: it reconnects      nothing
may_retry_archive()    only once the walreceiver       always                      never (nothing to retry)
                       is not running
=====================  ==============================  ==========================  ======================
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from startup.standby import Standby


class Policy:
    name = "base"
    startup_restores = True

    def __init__(self, sb: "Standby"):
        self.sb = sb

    def before_restore(self) -> None:
        pass

    def archive_dry(self, pos: int) -> None:
        if not self.sb.walrcv_running():
            self.sb.request_walreceiver(pos)

    def stream_lost(self) -> None:
        pass

    def may_retry_archive(self) -> bool:
        return True

    def timeline_changed(self) -> None:
        """A newer timeline was found: the walreceiver must restart on it."""
        self.sb.stop_walreceiver("new target timeline")


class StopWalreceiver(Policy):
    """The startup stops the walreceiver before it retries the archive."""
    name = "stop_walreceiver"

    def before_restore(self) -> None:
        self.sb.stop_walreceiver("restoring from archive")

    def stream_lost(self) -> None:
        self.sb.stop_walreceiver("streaming stopped")

    def may_retry_archive(self) -> bool:
        return not self.sb.walrcv_running()


class Concurrent(Policy):
    """The walreceiver keeps reconnecting while the startup retries the archive."""
    name = "concurrent"


class WalreceiverRestores(Policy):
    """The walreceiver is the only WAL fetcher; the startup reads pg_wal up to its flush."""
    name = "walreceiver_restores"
    startup_restores = False

    def may_retry_archive(self) -> bool:
        return False


POLICIES = {p.name: p for p in (StopWalreceiver, Concurrent, WalreceiverRestores)}


def make_policy(name: str, sb: "Standby") -> Policy:
    return POLICIES[name](sb)

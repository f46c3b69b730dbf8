"""The write/flush/replay lag pg_stat_replication shows, as PostgreSQL's walsender computes it.

``LagTracker`` keeps (LSN, send time) samples in a ring; a standby's reply of a position reads the
time that position was sent, interpolating between samples.  ``sane_reply_time`` turns a reply's
send time (the standby's clock: untrusted) into something the view can show.
"""
from __future__ import annotations

PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000   # 2000-01-01 in Unix microseconds
LAG_TRACKER_BUFFER_SIZE = 8192


# The reply times pg_stat_replication can show (years 1 to 9999, in Unix microseconds).
# A standby's clock is untrusted input: anything outside is published as NULL, so that one
# client's absurd value never breaks the view for everyone.
MIN_REPLY_TIME_US = -62135596800 * 1_000_000
MAX_REPLY_TIME_US = 253402300799 * 1_000_000


def sane_reply_time(client_time: int) -> int:
    """A standby status message's send time (PostgreSQL epoch) as Unix microseconds, or 0 (NULL)."""
    unix_us = client_time + PG_EPOCH_OFFSET_US
    return unix_us if MIN_REPLY_TIME_US <= unix_us <= MAX_REPLY_TIME_US else 0


class LagTracker:
    """PostgreSQL's LagTracker: samples (lsn, time) at send time, read per position kind."""

    WRITE, FLUSH, APPLY = 0, 1, 2

    def __init__(self) -> None:
        self.last_lsn = 0
        self.buffer: list[tuple[int, int]] = [(0, 0)] * LAG_TRACKER_BUFFER_SIZE
        self.write_head = 0
        self.read_heads = [0, 0, 0]
        self.last_read: list[tuple[int, int]] = [(0, 0), (0, 0), (0, 0)]

    def write(self, lsn: int, t: int) -> None:
        if self.last_lsn == lsn:
            return
        self.last_lsn = lsn
        new_head = (self.write_head + 1) % LAG_TRACKER_BUFFER_SIZE
        if any(new_head == h for h in self.read_heads):
            # Full: overwrite the newest sample instead (lose resolution, not data).
            new_head = self.write_head
            self.write_head = self.write_head - 1 if self.write_head > 0 else LAG_TRACKER_BUFFER_SIZE - 1
        self.buffer[self.write_head] = (lsn, t)
        self.write_head = new_head

    def read(self, head: int, lsn: int, now: int) -> int:
        """Lag in microseconds for a reported position, or -1 when unknown."""
        t = 0
        while self.read_heads[head] != self.write_head and self.buffer[self.read_heads[head]][0] <= lsn:
            t = self.buffer[self.read_heads[head]][1]
            self.last_read[head] = self.buffer[self.read_heads[head]]
            self.read_heads[head] = (self.read_heads[head] + 1) % LAG_TRACKER_BUFFER_SIZE
        if self.read_heads[head] == self.write_head:
            self.last_read[head] = (self.last_read[head][0], 0)
        if t > now:
            return -1
        if t == 0:
            if self.read_heads[head] == self.write_head:
                return -1
            if self.last_read[head][1] != 0:
                prev = self.last_read[head]
                nxt = self.buffer[self.read_heads[head]]
                if lsn < prev[0] or prev[1] > nxt[1] or nxt[0] <= prev[0]:
                    return -1
                fraction = (lsn - prev[0]) / (nxt[0] - prev[0])
                t = int(prev[1] + (nxt[1] - prev[1]) * fraction)
            else:
                t = self.buffer[self.read_heads[head]][1]
        return now - t

"""Building blocks shared by the standby tests (issues 3 and 4)."""
from __future__ import annotations

import os
from pathlib import Path

from tests.cluster import Node, wait_for
from xlog.lsn import is_segment_name, parse_lsn, segno_of

COORDINATIONS = ["stop_walreceiver", "concurrent", "walreceiver_restores"]


def write_rows(node: Node, start: int, n: int, size: int = 300, switch_every: int = 0, prefix: str = "k") -> None:
    c = node.connect()
    try:
        cur = c.cursor()
        for i in range(start, start + n):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"{prefix}{i:06d}", f"v{i}-" + "x" * size))
            if switch_every and i % switch_every == switch_every - 1:
                cur.execute("SELECT pg_switch_wal()")
    finally:
        c.close()


def archived(archive: str) -> list[str]:
    return sorted(f for f in os.listdir(archive) if is_segment_name(f))


def archiver_idle(primary: Node) -> bool:
    d = os.path.join(primary.datadir, "pg_wal", "archive_status")
    return not [f for f in os.listdir(d) if f.endswith(".ready")]


def wait_archived(primary: Node, timeout: float = 30.0) -> None:
    wait_for(lambda: archiver_idle(primary), timeout, f"{primary.name}'s archiver to catch up")


def make_primary(nodes, tmp_path: Path, name: str = "primary", **conf) -> tuple[Node, str]:
    archive = str(tmp_path / "archive")
    os.makedirs(archive, exist_ok=True)
    conf.setdefault("archive_mode", "on")
    conf.setdefault("archive_command", f"cp %p {archive}/%f")
    conf.setdefault("wal_keep_size", 0)
    p = nodes.primary(name, **conf)
    return p, archive


def current_lsn(node: Node) -> int:
    return parse_lsn(node.sql("SELECT pg_current_wal_lsn()")[0][0])


def fill_to_segment_offset(node: Node, segsize: int, room: int) -> None:
    """Write small rows until the insert position is within ``room`` bytes of a segment's end."""
    c = node.connect()
    try:
        cur = c.cursor()
        i = 0
        while True:
            cur.execute("SELECT pg_current_wal_lsn()")
            lsn = parse_lsn(cur.fetchone()[0])
            left = segsize - lsn % segsize
            if left <= room and left > room // 2:
                return
            step = min(4000, max(10, left - room + 100)) if left > room else 4000
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"fill{i:06d}", "f" * step))
            i += 1
    finally:
        c.close()


def seg_of(lsn: int, segsize: int = 1024 * 1024) -> int:
    return segno_of(lsn, segsize)

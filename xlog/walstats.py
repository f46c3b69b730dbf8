"""``walswitch waldump --stats[=record]``: the summary table of PostgreSQL 15's ``pg_waldump --stats``.

Counts and sizes per resource manager (every built-in one, with zeros, then
any custom one that occurs), or per resource manager and record type
(``=record``: only the types that occur): number of records, record size
(without full-page images), FPI size and the two combined, each with its
share of the total, then a Total line; the same columns and widths as
pg_waldump, so the two outputs compare with ``diff``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import constants as C
from .lsn import format_lsn
from .record import DecodedRecord
from .rmgrdesc import identify

_ROW = "%-27s %20d (%6.02f) %20d (%6.02f) %20d (%6.02f) %20d (%6.02f)"
_HEAD = "%-27s %20s %8s %20s %8s %20s %8s %20s %8s"
_RULE = "%-27s %20s %8s %20s %8s %20s %8s %20s"
_TOTAL = "%-27s %20d %-9s%20d %-9s%20d %-9s%20d %-6s"


@dataclass
class WalStats:
    per_record: bool = False
    start: int | None = None          # first record's LSN
    end: int = 0                      # the end of the last record (next record's start)
    counts: dict[tuple[int, int], list[int]] = field(default_factory=dict)   # (rmid, type) -> [n, rec, fpi]

    def add(self, recs: Iterable[DecodedRecord]) -> None:
        counts = self.counts
        rec = None
        for rec in recs:
            key = (rec.rmid, rec.info >> 4)
            c = counts.get(key)
            if c is None:
                c = counts[key] = [0, 0, 0]
            c[0] += 1
            c[1] += rec.tot_len - rec.fpi_len
            c[2] += rec.fpi_len
            if self.start is None:
                self.start = rec.lsn
        if rec is not None:
            self.end = rec.next_lsn

    def lines(self) -> list[str]:
        n_all = sum(c[0] for c in self.counts.values())
        rec_all = sum(c[1] for c in self.counts.values())
        fpi_all = sum(c[2] for c in self.counts.values())
        tot_all = rec_all + fpi_all
        out = [f"WAL statistics between {format_lsn(self.start or 0)} and {format_lsn(self.end)}:",
               _HEAD % ("Type", "N", "(%)", "Record size", "(%)", "FPI size", "(%)", "Combined size", "(%)"),
               _HEAD % ("----", "-", "---", "-----------", "---", "--------", "---", "-------------", "---")]

        def pct(a: int, b: int) -> float:
            return 100.0 * a / b if b else 0.0

        def row(name: str, n: int, rec: int, fpi: int) -> str:
            return _ROW % (name, n, pct(n, n_all), rec, pct(rec, rec_all), fpi, pct(fpi, fpi_all),
                           rec + fpi, pct(rec + fpi, tot_all))

        rmids = sorted({r for r, _ in self.counts} | set(range(C.RM_MAX_BUILTIN_ID + 1)))
        for rmid in rmids:
            types = sorted(t for r, t in self.counts if r == rmid)
            if not self.per_record:
                if not types and rmid > C.RM_MAX_BUILTIN_ID:
                    continue
                sums = [sum(self.counts[(rmid, t)][i] for t in types) for i in range(3)]
                out.append(row(C.rmgr_name(rmid), *sums))
                continue
            for t in types:
                ident = identify(rmid, t << 4)
                name = f"{C.rmgr_name(rmid)}/{ident if ident is not None else f'UNKNOWN ({t << 4:x})'}"
                out.append(row(name, *self.counts[(rmid, t)]))
        out.append(_RULE % ("", "--------", "", "--------", "", "--------", "", "--------"))
        out.append(_TOTAL % ("Total", n_all, "", rec_all, f"[{pct(rec_all, tot_all):.02f}%]", fpi_all,
                             f"[{pct(fpi_all, tot_all):.02f}%]", tot_all, "[100%]"))
        return out

"""The WAL archive of one comparison run, with the faults of the ``archive`` steps.

Layout of ``DIR``::

    wal/              what archive_command copied (the primary's completed segments, .history files)
    ctl-NAME/         one control directory per standby that restores from it:
      restore.sh        its restore_command is ``sh DIR/ctl-NAME/restore.sh %f %p``
      delay_ms          restore latency (cluster.restore_latency_ms, ``archive slow MS``)
      fail              present: every call exits 1 (``archive fail``)
      hide/FILE         present: that file is "not there" (``archive hide SEGMENT``)
      calls.log         one line per call: wall-clock time, file, exit status

The script is plain ``sh`` (no interpreter start per call, which would add
its own latency), and the same for walswitch and for PostgreSQL, so both
pay the same latency and see the same faults, and ``calls.log`` counts
restore_command calls the same way for both.  Only the standby under test
gets faults; a second standby (the one ``promote`` promotes) has its own
control directory that stays normal.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from walswitch.compare.servers import give_to_postgres

SCRIPT = """\
#!/bin/sh
# restore_command of a walswitch compare run: latency, failure and hidden files set by the run.
ctl='{ctl}'
ms=$(cat "$ctl/delay_ms" 2>/dev/null || echo 0)
if [ "$ms" -gt 0 ]; then sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"; fi
if [ -e "$ctl/fail" ] || [ -e "$ctl/hide/$1" ] || [ ! -f '{wal}'/"$1" ]; then
  rc=1
else
  cp '{wal}'/"$1" "$2"; rc=$?
fi
echo "$(date +%s.%N) $1 $rc" >> "$ctl/calls.log"
exit $rc
"""


@dataclass
class RestoreCall:
    ts: float
    file: str
    exit: int


class Archive:
    def __init__(self, base: Path, postgres: bool = False) -> None:
        self.dir = base
        self.wal = base / "wal"
        self.postgres = postgres
        self.wal.mkdir(parents=True, exist_ok=True)
        self._share(self.dir, 0o755)
        self._share(self.wal, 0o777)

    def _share(self, path: Path, mode: int) -> None:
        if self.postgres:
            give_to_postgres(path, mode)
        else:
            os.chmod(path, mode)

    @property
    def archive_command(self) -> str:
        return f"test ! -f {self.wal}/%f && cp %p {self.wal}/%f"

    def ctl(self, name: str) -> Path:
        return self.dir / f"ctl-{name}"

    def restore_command(self, name: str, latency_ms: int) -> str:
        """Create the control directory of one standby; its restore_command."""
        ctl = self.ctl(name)
        (ctl / "hide").mkdir(parents=True, exist_ok=True)
        (ctl / "restore.sh").write_text(SCRIPT.format(ctl=ctl, wal=self.wal))
        (ctl / "delay_ms").write_text(str(latency_ms))
        (ctl / "calls.log").touch()
        for p in (ctl, ctl / "hide"):
            self._share(p, 0o777)
        os.chmod(ctl / "calls.log", 0o666)
        return f"sh {ctl}/restore.sh %f %p"

    # ------------------------------------------------------------ the archive steps
    def slow(self, name: str, ms: int) -> None:
        _write(self.ctl(name) / "delay_ms", str(ms))

    def fail(self, name: str) -> None:
        (self.ctl(name) / "fail").touch()

    def hide(self, name: str, file: str) -> None:
        (self.ctl(name) / "hide" / file).touch()

    def restore(self, name: str, latency_ms: int) -> None:
        """Back to normal: the cluster's latency, nothing failing, nothing hidden."""
        ctl = self.ctl(name)
        _write(ctl / "delay_ms", str(latency_ms))
        (ctl / "fail").unlink(missing_ok=True)
        shutil.rmtree(ctl / "hide", ignore_errors=True)
        (ctl / "hide").mkdir(exist_ok=True)
        self._share(ctl / "hide", 0o777)

    # ------------------------------------------------------------ what happened
    def calls(self, name: str) -> list[RestoreCall]:
        out = []
        try:
            text = (self.ctl(name) / "calls.log").read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                try:
                    out.append(RestoreCall(float(parts[0]), parts[1], int(parts[2])))
                except ValueError:
                    continue
        return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

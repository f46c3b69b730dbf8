"""``make bench``: run the benchmarks, print a table, write bench-results/<name>.json.

``python -m bench.run [name ...]`` runs some of them; names: pgbench, waldump.
"""
from __future__ import annotations

import json
import os
import sys
import time

from bench.common import ROOT

BENCHES = {
    "pgbench": ("bench.pgbench_tps", "commits/s, pgbench -n -M simple -f (4 clients, fsync on)"),
    "waldump": ("bench.waldump_speed", "WAL decoding MB/s, walswitch waldump vs pg_waldump"),
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    os.makedirs(ROOT / "bench-results", exist_ok=True)
    results = {}
    for name in names:
        mod_name, title = BENCHES[name]
        mod = __import__(mod_name, fromlist=["run"])
        t0 = time.monotonic()
        res = mod.run()
        res["seconds"] = round(time.monotonic() - t0, 1)
        results[name] = res
        with open(ROOT / "bench-results" / f"{name}.json", "w") as f:
            json.dump(res, f, indent=2)
        print(f"== {name}: {title}")
        for k, v in res.items():
            if isinstance(v, float):
                print(f"   {k:24s} {v:10.2f}")
            elif isinstance(v, list):
                print(f"   {k:24s} {', '.join(f'{x:.1f}' for x in v)}")
            else:
                print(f"   {k:24s} {v}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Parse cost per statement on the commit path: pglast's JSON output (what backend/parse.py uses,
decoded with json.loads and converted to our tree) against pglast's object tree (``pglast.parse_sql``).

    .venv/bin/python -m bench.parse_cost

Prints microseconds per statement (median of 5 rounds) for the pgbench_tps INSERT and a point SELECT.
"""
from __future__ import annotations

import json
import statistics
import time

import pglast

from backend.parse import parse

STATEMENTS = {
    "insert": "INSERT INTO kv VALUES (42, 'value-' || 42) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "select": "SELECT value FROM kv WHERE key = 'k42'",
}


def per_call_us(fn, arg: str, n: int = 5000) -> float:
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


def run() -> dict:
    out = {}
    for name, q in STATEMENTS.items():
        json_only = per_call_us(lambda s: json.loads(pglast.parser.parse_sql_json(s)), q)
        out[name] = {"json_and_convert_us": round(per_call_us(parse, q), 1),
                     "json_only_us": round(json_only, 1),
                     "object_tree_us": round(per_call_us(pglast.parse_sql, q), 1)}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

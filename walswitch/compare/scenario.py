"""Scenarios: a cluster and a timeline of fault steps, read from TOML (``scenarios/*.toml``).

A scenario file::

    name = "outage"
    description = "The primary is away for 20 s under load."

    [cluster]                      # every key optional; defaults below (Cluster)
    segment_size_mb = 1
    restore_latency_ms = 50
    retry_interval_ms = 1000       # wal_retrieve_retry_interval of the standby
    prefetch = 0                   # walreceiver_restore_prefetch
    load_rate = 200                # commits/s over all writers, 0 = as fast as they can
    row_size = 200                 # bytes per written value
    [cluster.settings]             # any other setting of the standby
    concurrent_guard = "off"

    steps = [ "load on", "wait 5", "primary stop -m immediate", "wait 20", "primary start", ... ]

(``steps`` is a top-level key; in the file it comes before ``[cluster]``.)

Each step is one line of the vocabulary in ``VOCABULARY`` (also printed by
``walswitch compare --help``).  ``parse_step`` turns it into a ``Step``
whose ``text`` is the canonical form; ``dumps`` writes a ``Scenario`` back
as TOML that ``load`` reads into an equal one, which is how ``walswitch
soak`` prints a schedule that ``walswitch compare`` replays exactly.

Errors (unknown key, bad value, bad step) raise ``ScenarioError`` with the
file and the step's index: one line, never a traceback.
"""
from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ROLES = ("startup", "walreceiver", "postmaster", "walsender")
# Where ``kill ROLE at POINT`` may fire (utils/inject.py), per role that passes the point.
POINTS = {
    "startup": ("before_restore", "before_install", "after_restore"),
    "walreceiver": ("walreceiver_start", "before_write", "after_write", "before_flush", "after_flush",
                    "walreceiver_stop", "before_restore", "after_restore"),
}
STOP_MODES = ("smart", "fast", "immediate")
SEGMENT_RE = re.compile(r"^([0-9A-F]{24}|current([+-]\d+)?)$")

VOCABULARY = """\
load SECONDS                   writers commit for SECONDS, then stop
load on | load off             writers run in the background from now | stop
wait SECONDS                   let time pass (background load goes on)
wait streaming | caught_up     until the standby streams | replayed what the primary flushed
primary stop [-m MODE]         smart, fast (default) or immediate
primary start | restart [-m MODE]
link cut | restore | stall     the standby's connection to the primary (link proxy)
link flap [COUNT [PERIOD_MS]]  cut and restore COUNT times (default 3), PERIOD_MS apart (default 1000)
archive slow MS | fail | restore          restore_command latency | exits 1 | back to normal
archive hide SEGMENT           restore_command says "not there" for it: a 24-hex name or current[+-N]
kill ROLE [at POINT]           SIGKILL startup|walreceiver|postmaster (standby) or walsender (primary),
                               now or when it reaches an injection point
promote                        promote the second standby; it becomes the primary (cluster.standbys = 2)
checkpoint | switch_wal        on the primary"""


class ScenarioError(ValueError):
    pass


@dataclass
class Cluster:
    segment_size_mb: int = 1
    restore_latency_ms: int = 50
    retry_interval_ms: int = 1000
    prefetch: int = 0
    load_rate: float = 200.0
    row_size: int = 200
    writers: int = 4
    standbys: int = 1
    wal_keep_size_mb: int = 64
    checkpoint_timeout_s: int = 30
    timeout_s: float = 60.0           # bound of every wait of the run
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    verb: str                         # load, wait, primary, link, archive, kill, promote, checkpoint, switch_wal
    action: str = ""                  # e.g. stop, cut, slow, the role to kill, "on", "streaming"
    seconds: float = 0.0              # load/wait SECONDS
    mode: str = ""                    # primary stop/restart -m MODE
    ms: int = 0                       # archive slow MS, link flap PERIOD_MS
    count: int = 0                    # link flap COUNT
    segment: str = ""                 # archive hide SEGMENT
    point: str = ""                   # kill ROLE at POINT

    @property
    def text(self) -> str:
        """The canonical one-line form (parse_step(step.text) == step)."""
        v, a = self.verb, self.action
        if v in ("load", "wait"):
            return f"{v} {a}" if a else f"{v} {self.seconds:g}"
        if v == "primary":
            return f"primary {a}" + (f" -m {self.mode}" if self.mode else "")
        if v == "link":
            return f"link flap {self.count} {self.ms}" if a == "flap" else f"link {a}"
        if v == "archive":
            return {"slow": f"archive slow {self.ms}", "hide": f"archive hide {self.segment}"}.get(a, f"archive {a}")
        if v == "kill":
            return f"kill {a}" + (f" at {self.point}" if self.point else "")
        return v

    @property
    def is_fault(self) -> bool:
        return self.verb in ("primary", "link", "archive", "kill", "promote")


@dataclass
class Scenario:
    name: str
    description: str = ""
    cluster: Cluster = field(default_factory=Cluster)
    steps: list[Step] = field(default_factory=list)
    source: str = ""                  # the file it came from, if any


def _number(tok: str, what: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise ScenarioError(f"{what} must be a number, not {tok!r}") from None
    if v < 0 or v != v:
        raise ScenarioError(f"{what} must not be negative")
    return v


def parse_step(text: str) -> Step:
    """One step of the vocabulary; ScenarioError says what is wrong with it."""
    try:
        toks = shlex.split(text)
    except ValueError as e:
        raise ScenarioError(f"cannot read step {text!r}: {e}") from None
    if not toks:
        raise ScenarioError("empty step")
    verb, args = toks[0], toks[1:]
    parser = _PARSERS.get(verb)
    if parser is None:
        raise ScenarioError(f"unknown step {verb!r} (known: {', '.join(_PARSERS)})")
    try:
        return parser(args)
    except ScenarioError as e:
        raise ScenarioError(f"step {text!r}: {e}") from None


def _load_or_wait(verb: str, args: list[str]) -> Step:
    words = ("on", "off") if verb == "load" else ("streaming", "caught_up")
    if len(args) != 1:
        raise ScenarioError(f"{verb} takes SECONDS or one of {', '.join(words)}")
    if args[0] in words:
        return Step(verb, args[0])
    return Step(verb, seconds=_number(args[0], "SECONDS"))


def _primary(args: list[str]) -> Step:
    if not args or args[0] not in ("stop", "start", "restart"):
        raise ScenarioError("primary takes stop, start or restart")
    mode = ""
    rest = args[1:]
    if rest[:1] == ["-m"] and len(rest) == 2 and args[0] != "start":
        mode = rest[1]
        if mode not in STOP_MODES:
            raise ScenarioError(f"-m takes {', '.join(STOP_MODES)}")
    elif rest:
        raise ScenarioError(f"unexpected {' '.join(rest)!r}")
    return Step("primary", args[0], mode=mode or ("" if args[0] == "start" else "fast"))


def _link(args: list[str]) -> Step:
    if not args or args[0] not in ("cut", "restore", "stall", "flap"):
        raise ScenarioError("link takes cut, restore, stall or flap")
    if args[0] != "flap":
        if len(args) > 1:
            raise ScenarioError(f"unexpected {' '.join(args[1:])!r}")
        return Step("link", args[0])
    if len(args) > 3:
        raise ScenarioError("link flap takes at most COUNT and PERIOD_MS")
    count = int(_number(args[1], "COUNT")) if len(args) > 1 else 3
    period = int(_number(args[2], "PERIOD_MS")) if len(args) > 2 else 1000
    if count < 1 or period < 10:
        raise ScenarioError("link flap needs COUNT >= 1 and PERIOD_MS >= 10")
    return Step("link", "flap", count=count, ms=period)


def _archive(args: list[str]) -> Step:
    if not args or args[0] not in ("slow", "fail", "hide", "restore"):
        raise ScenarioError("archive takes slow MS, fail, hide SEGMENT or restore")
    a = args[0]
    if a in ("fail", "restore"):
        if len(args) > 1:
            raise ScenarioError(f"unexpected {' '.join(args[1:])!r}")
        return Step("archive", a)
    if len(args) != 2:
        raise ScenarioError(f"archive {a} takes one argument")
    if a == "slow":
        return Step("archive", "slow", ms=int(_number(args[1], "MS")))
    if not SEGMENT_RE.match(args[1]):
        raise ScenarioError(f"SEGMENT must be a 24-hex segment file name or current[+-N], not {args[1]!r}")
    return Step("archive", "hide", segment=args[1])


def _kill(args: list[str]) -> Step:
    if not args or args[0] not in ROLES:
        raise ScenarioError(f"kill takes one of {', '.join(ROLES)}")
    role = args[0]
    if len(args) == 1:
        return Step("kill", role)
    if len(args) != 3 or args[1] != "at":
        raise ScenarioError("kill ROLE takes at most 'at POINT'")
    if args[2] not in POINTS.get(role, ()):
        raise ScenarioError(f"{role} has no injection point {args[2]!r} "
                            f"(it has: {', '.join(POINTS.get(role, ())) or 'none'})")
    return Step("kill", role, point=args[2])


def _bare(verb: str):
    def parse(args: list[str]) -> Step:
        if args:
            raise ScenarioError(f"{verb} takes no argument")
        return Step(verb)
    return parse


_PARSERS = {
    "load": lambda a: _load_or_wait("load", a),
    "wait": lambda a: _load_or_wait("wait", a),
    "primary": _primary,
    "link": _link,
    "archive": _archive,
    "kill": _kill,
    "promote": _bare("promote"),
    "checkpoint": _bare("checkpoint"),
    "switch_wal": _bare("switch_wal"),
}


# ---------------------------------------------------------------- files
def _cluster(raw: dict[str, Any]) -> Cluster:
    known = {f.name: f for f in fields(Cluster)}
    out = Cluster()
    for k, v in raw.items():
        f = known.get(k)
        if f is None:
            raise ScenarioError(f"unknown cluster key {k!r} (known: {', '.join(known)})")
        if k == "settings":
            if not isinstance(v, dict):
                raise ScenarioError("cluster.settings must be a table")
            out.settings = dict(v)
            continue
        default = getattr(out, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ScenarioError(f"cluster.{k} must be a number")
        if v < 0:
            raise ScenarioError(f"cluster.{k} must not be negative")
        setattr(out, k, type(default)(v))
    if out.segment_size_mb < 1 or out.segment_size_mb & (out.segment_size_mb - 1):
        raise ScenarioError("cluster.segment_size_mb must be a power of two")
    if out.standbys not in (1, 2):
        raise ScenarioError("cluster.standbys must be 1 or 2")
    if out.writers < 1:
        raise ScenarioError("cluster.writers must be at least 1")
    return out


def from_dict(raw: dict[str, Any], source: str = "") -> Scenario:
    extra = set(raw) - {"name", "description", "cluster", "steps"}
    if extra:
        raise ScenarioError(f"unknown key(s) {', '.join(sorted(extra))} (known: name, description, cluster, steps)")
    steps_raw = raw.get("steps", [])
    if not isinstance(steps_raw, list) or not all(isinstance(s, str) for s in steps_raw):
        raise ScenarioError("steps must be a list of strings")
    steps = []
    for i, s in enumerate(steps_raw, 1):
        try:
            steps.append(parse_step(s))
        except ScenarioError as e:
            raise ScenarioError(f"step {i}: {e}") from None
    cluster = _cluster(raw.get("cluster", {}) or {})
    if any(s.verb == "promote" for s in steps) and cluster.standbys < 2:
        raise ScenarioError("promote needs cluster.standbys = 2 (the standby it promotes)")
    if sum(s.verb == "promote" for s in steps) > 1:
        raise ScenarioError("at most one promote per scenario")
    name = raw.get("name") or (Path(source).stem if source else "scenario")
    return Scenario(str(name), str(raw.get("description", "")), cluster, steps, source)


def load(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    try:
        return from_dict(raw, str(p))
    except ScenarioError as e:
        raise ScenarioError(f"{p}: {e}") from None


def loads(text: str, source: str = "") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"not valid TOML: {e}") from None
    return from_dict(raw, source)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)   # a JSON string is a TOML basic string


def dumps(sc: Scenario, comment: str = "") -> str:
    """The scenario as TOML that ``loads`` reads back into an equal scenario."""
    lines = [f"# {c}" for c in comment.splitlines()] if comment else []
    lines += [f"name = {_toml_value(sc.name)}", f"description = {_toml_value(sc.description)}", "steps = ["]
    lines += [f"  {_toml_value(s.text)}," for s in sc.steps]
    lines += ["]", "", "[cluster]"]
    for f in fields(Cluster):
        if f.name != "settings":
            lines.append(f"{f.name} = {_toml_value(getattr(sc.cluster, f.name))}")
    if sc.cluster.settings:
        lines += ["", "[cluster.settings]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sc.cluster.settings.items()]
    return "\n".join(lines) + "\n"

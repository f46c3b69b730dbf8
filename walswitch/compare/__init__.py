"""``walswitch compare`` and ``walswitch soak``: the approaches side by side, and PostgreSQL 15 beside them.

Modules, in the order a run uses them:

* scenario.py   the TOML scenario files and the step vocabulary (parse, validate, write back)
* servers.py    temporary walswitch and PostgreSQL servers (shared with bench/)
* archive.py    the run's archive and its faults (latency, failure, hidden files), restore calls logged
* systems.py    the system under test: primary, standby behind the link proxy, second standby
* pgsystem.py   the same on real PostgreSQL 15
* load.py       writer threads, with the set of acknowledged commits
* run.py        one run: set-up, the steps, heal, catch-up, checks, figures
* trace.py      what the servers recorded, in one shape (walswitch events; pglog.py: PostgreSQL's log)
* figures.py    the figures from a trace; invariants.py: the checks after a run
* timeline.py   sampler and PNG; report.py: medians and tables; progress.py: the live display
* command.py    ``walswitch compare``; soak.py: ``walswitch soak`` (random schedules)
"""

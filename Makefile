# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PGBIN := /usr/lib/postgresql/15/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench pg clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV) || { \
	  echo "python3-venv missing: installing it"; apt-get update -qq && apt-get install -y -qq python3-venv && $(PY) -m venv $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# PostgreSQL 15 server and client (pg_waldump, pg_receivewal, pgbench, psql, initdb).
pg:
	@if [ ! -x $(PGBIN)/pg_waldump ] || [ ! -x $(PGBIN)/pgbench ]; then \
	  echo "installing PostgreSQL 15 through apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15; \
	fi

demo: venv
	$(VPY) -m walswitch.demo

test: venv pg
	$(VPY) -m pytest -q $(PYTEST_ARGS)

bench: venv pg
	$(VPY) -m pip install -q matplotlib
	$(VPY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

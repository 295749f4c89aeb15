# Two commands on a fresh Debian machine, as root: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services browser tools ha failover install lock upgrade migrate seed bench bench-quick bench-engine bench-console bench-quality bench-deadlines bench-backup lint audit-verify clean-venv chaos

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip check
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

services:
	bash deploy/ensure-services.sh

migrate: install services
	$(BIN)/python -m store.db

seed: migrate
	$(BIN)/python -m store.demo

run: seed
	$(BIN)/python deploy/run_all.py

browser:  ## Debian's Chromium and CJK fonts for the console's browser tests
	bash deploy/ensure-browser.sh

tools:  ## docker-compose and promtool, to validate the deployment files offline (tests/test_deploy_manifests.py)
	bash deploy/ensure-tools.sh

ha:  ## Patroni, etcd and HAProxy (Debian's packages), for the failover test (tests/test_pg_failover.py)
	bash deploy/ensure-ha.sh

test: install services browser tools ha lint
	$(BIN)/python -m pytest -q -n 2 --dist load --durations=25

bench: install services  ## sustained load: 5,000 reports/s for 60 s on a fresh ccs_bench database
	$(BIN)/python -m simulators.bench

bench-quick: install services
	$(BIN)/python -m simulators.bench --quick

bench-engine: install services  ## accuracy-aware decisions/s on one core vs a per-fix PostGIS query
	$(BIN)/python -m simulators.engine_bench

bench-deadlines: install services  ## silence deadlines for 700,000 devices: memory, cost, delay
	$(BIN)/python -m simulators.deadline_bench

bench-backup: install services  ## restore drill at 10 million positions on a private archiving cluster (docs/backups.md)
	$(BIN)/python -m simulators.backup_bench

bench-console: install services browser  ## the duty view with 1,000 supervisees in Chromium: first paint, usable map, alert to screen
	$(BIN)/python -m simulators.console_bench

bench-quality: install  ## alert quality on realistic phones (1/5/15-min, profile, today's 60 s, replayed without answers), 10,000 person-days
	$(BIN)/python -m simulators.quality --workers 2

lint: install  ## ruff and mypy; part of `make test`, so CI runs them too
	$(BIN)/ruff check .
	$(BIN)/mypy geofence ingest alerts api console store simulators

audit-verify: install  ## recompute the audit log's hash chain; exits 1 on tamper (ANCHOR=SEQ:HASH to check a head kept elsewhere)
	$(BIN)/python -m store.audit verify $(if $(ANCHOR),--anchor $(ANCHOR))

clean-venv:
	rm -rf $(VENV)

# The hashed lock, from pyproject.toml: `make lock` after changing the dependencies (keeps the
# other pins), `make upgrade` to move every package to its newest allowed version.
PIP_COMPILE := $(BIN)/python -m piptools compile --quiet --generate-hashes --allow-unsafe --extra dev \
	--strip-extras --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

lock: install
	$(BIN)/pip install -q 'pip-tools>=7.4'
	$(PIP_COMPILE)

upgrade: install
	$(BIN)/pip install -q 'pip-tools>=7.4'
	$(PIP_COMPILE) --upgrade

failover: install ha  ## PostgreSQL primary killed twice under 2,000 reports/s: three Patroni nodes behind HAProxy (own instances)
	$(BIN)/python -m simulators.chaos --patroni --markdown .run/failover-result.md

chaos: install  ## fault injection: 2,000 reports/s for 5 min, SIGKILLs every 10 s, Redis/PostgreSQL/Mosquitto restarts (own instances)
	$(BIN)/python -m simulators.chaos --markdown .run/chaos-result.md

# Entry points: `make run` starts the stack, `make test` runs every suite.
# Both install what they need first: a Python virtualenv in backend/.venv, the
# frontend's npm packages (Node 22 comes with them) and, for tests, Debian's chromium.

SHELL := /bin/bash
PYTHON ?= python3
VENV := backend/.venv
PY := $(VENV)/bin/python
# Procrastinate and arq, the benchmark's comparison points, live apart from the app's packages.
BENCH_VENV := bench/.venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install backend-install frontend-install frontend-build browser run dev test test-backend stop-test-db soak bench bench-install up down clean

help:
	@echo "make run     start PostgreSQL (embedded unless DATABASE_URL is set), the API on :8000 and the dashboard on :3000"
	@echo "make dev     the same with hot reload"
	@echo "make test    backend, frontend unit and browser tests against a real PostgreSQL"
	@echo "make soak    the long fault and load runs (see docs/reliability.md)"
	@echo "make bench   the benchmark suite (see docs/benchmarks.md)"
	@echo "make up      docker compose up --build"

install: backend-install frontend-install

backend-install: $(VENV)/.installed

$(VENV)/.installed: backend/requirements.txt backend/requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r backend/requirements-dev.txt
	touch $@

frontend-install: frontend/node_modules/.installed

frontend/node_modules/.installed: frontend/package.json frontend/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required: install Node.js with npm"; exit 1; }
	cd frontend && npm ci --no-audit --no-fund
	touch $@

frontend-build: frontend-install
	cd frontend && npm run build

# Browser tests drive Debian's chromium; no test tool downloads a browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

run: backend-install frontend-build
	$(PY) scripts/run.py

dev: backend-install frontend-install
	$(PY) scripts/run.py --dev

test: backend-install bench-install frontend-build browser
	$(PY) scripts/test_all.py

test-backend: backend-install
	cd backend && .venv/bin/python -m pytest

# Tests leave the embedded test PostgreSQL running for the next run; this stops it.
stop-test-db: backend-install
	$(PY) backend/scripts/database.py stop-test-server

# Longer fault and load runs than make test has time for; results in .data/soak/.
soak: backend-install
	$(PY) soak/run.py

bench-install: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $@

# The local server (not the embedded one) has pg_trgm, which the name-search figures need.
bench: backend-install bench-install
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
		$(BENCH_VENV)/bin/python bench/run_all.py --rounds 3

up:
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf frontend/.output frontend/.nuxt .data/test-results

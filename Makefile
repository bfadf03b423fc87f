# `make run`: venv, install, migrate, run the daemon on the embedded dev config.
# `make test`: install what the tests need (Debian packages via apt-get when missing) and run
# the whole suite against a PostgreSQL server (127.0.0.1:5432, or a throwaway one).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/seclistd.dev.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: run test venv deps-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	# The official OSV JSON Schema for tests/test_export.py: Google's `osv` package ships
	# ossf/osv-schema (validation/schema.json, 1.6.7); only that file is read, so without its
	# Google Cloud dependencies.
	$(BIN)/pip install --quiet --no-deps 'osv==0.0.22'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/seclistd --config $(CONFIG) migrate
	$(BIN)/seclistd --config $(CONFIG) run

# What the suite needs from Debian, installed only when missing: Dovecot, gpg, faketime,
# systemd-analyze, and PostgreSQL's server binaries when no server answers on 127.0.0.1:5432
# (tests/with-postgres then starts a throwaway cluster of its own for the run).
APT_INSTALL = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
deps-test: $(STAMP)
	@missing=""; \
	{ command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; } || missing="$$missing dovecot-imapd"; \
	command -v gpg >/dev/null 2>&1 || missing="$$missing gnupg"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
	   ! $(BIN)/python -c "import psycopg; psycopg.connect('postgresql://postgres@127.0.0.1:5432/postgres', connect_timeout=3).close()" >/dev/null 2>&1; then \
	  missing="$$missing postgresql"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(APT_INSTALL)$$missing; fi

# Under `faketime -f '@DATE' make test` (the suite must pass on any date) the wall clock
# moves to DATE; the monotonic clock must stay real, or timed waits misjudge their timeouts.
test: export FAKETIME_DONT_FAKE_MONOTONIC = 1
test: $(STAMP) deps-test
	$(BIN)/ruff check seclistd migrations tests bench
	tests/with-postgres $(BIN)/python $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check seclistd migrations tests bench

bench: $(STAMP) deps-test
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var build *.egg-info

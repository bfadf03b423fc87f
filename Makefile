# `make run`: venv, install, migrate, run the daemon on the embedded dev config.
# `make test`: install what the tests need (dovecot-imapd via apt-get if missing) and run them.
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
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/seclistd --config $(CONFIG) migrate
	$(BIN)/seclistd --config $(CONFIG) run

deps-test:
	@command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dovecot-imapd; }
	@command -v gpg >/dev/null 2>&1 && command -v faketime >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gnupg faketime; }

test: $(STAMP) deps-test
	$(BIN)/ruff check seclistd migrations tests bench
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check seclistd migrations tests bench

bench: $(STAMP) deps-test
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var build *.egg-info

# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: bootstrap mosquitto broker-plugin chromium pg pg-tests pg-stop demo test hostile lint format bench clean

bootstrap: $(STAMP) mosquitto broker-plugin

# The venv is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is needed ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && [ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Mosquitto from Debian's packages when it is missing. The packaged service is not
# needed: tests and the demo start their own broker from broker-config/.
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  echo "Installing Mosquitto with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends mosquitto; }

# The broker's identity plugin (broker-config/plugin/, see broker-config/README.md),
# compiled against Debian's Mosquitto plugin headers (mosquitto-dev, libmosquitto-dev) and
# OpenSSL's (libssl-dev), installed with apt-get when missing, into var/ (git-ignored).
# Every broker the tests and the demo start loads it.
BROKER_PLUGIN := var/broker-plugin/ctpl_identity.so
broker-plugin: $(BROKER_PLUGIN)

$(BROKER_PLUGIN): broker-config/plugin/ctpl_identity.c | mosquitto
	@{ [ -e /usr/include/mosquitto_broker.h ] && [ -e /usr/include/mosquitto.h ] && \
	  [ -e /usr/include/openssl/x509.h ] && command -v gcc >/dev/null; } || { \
	  echo "Installing the Mosquitto plugin headers, OpenSSL's and gcc with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends \
	    mosquitto-dev libmosquitto-dev libssl-dev gcc libc6-dev; }
	@mkdir -p $(@D)
	gcc -std=gnu11 -O2 -Wall -Wextra -Werror -fPIC -shared -o $@.tmp $< -lcrypto
	@mv $@.tmp $@

# Chromium from Debian's packages for the head-unit and dashboard browser tests
# (Playwright drives it; Playwright's own browser download is not used), and a CJK font
# so that zh-CN pages render (and their screenshots show) real characters.
chromium:
	@{ command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; } && \
	  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || { \
	  echo "Installing Chromium and a CJK font with apt-get"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) apt-get install -y --no-install-recommends chromium fonts-wqy-microhei; }

# The PostgreSQL the store tests also run against (CTPL_TEST_PG_URL, default the CI
# service: postgresql://postgres@127.0.0.1:5432/test). Checks that it answers; never installs.
CTPL_TEST_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test
pg: bootstrap
	@$(BIN)/python .ci/pg_ready.py '$(CTPL_TEST_PG_URL)' || { \
	  echo "************************************************************************"; \
	  echo "PostgreSQL does not answer at $(CTPL_TEST_PG_URL)" | sed 's|//[^@/]*@|//|'; \
	  echo "The store tests run against it (and SQLite). Start one with trust auth for"; \
	  echo "127.0.0.1 and a database test, e.g. on Debian:"; \
	  echo "  sudo apt-get install -y postgresql && sudo service postgresql start"; \
	  echo "  sudo -u postgres createdb test"; \
	  echo "or set CTPL_TEST_PG_URL=postgresql://user@host:port/db"; \
	  echo "************************************************************************"; \
	  exit 1; }

# For `make test`: the PostgreSQL above if it answers, else a private one started in
# var/pg (installed through apt-get when missing; never under CI, where `make pg` fails).
pg-tests: bootstrap
	@.ci/pg_private || $(MAKE) --no-print-directory pg

pg-stop:
	@.ci/pg_private stop

demo: bootstrap
	$(BIN)/ctpl-sim demo --cars 20

test: bootstrap chromium pg-tests
	$(BIN)/pytest

# The hostile suite in full (tests/hostile, docs/security.md "The hostile suite"): every attack
# against the real broker, worker, API and agent, with the slow ones `make test` leaves out (the
# real HTTP deadlines, schemathesis) and hypothesis's larger profile. Prints the table of
# attempts, refusals, leaks and crashes, and writes it to var/hostile-figures.md.
hostile: bootstrap
	CTPL_HOSTILE=1 CTPL_HYPOTHESIS_PROFILE=hostile $(BIN)/pytest tests/hostile

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: bootstrap
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Round trips through one worker, then one agent's footprint (RSS, cold start, idle CPU).
bench: bootstrap
	$(BIN)/ctpl-sim bench --out docs/benchmarks.md
	$(BIN)/ctpl-sim footprint --out docs/benchmarks.md

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# WriteVue: `make demo` runs the product locally, `make test` runs the suite.
# Every target sets up .venv from the pinned lock on first use and is fast afterwards.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.writevue-installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint format venv chromium nginx lock bench clean production-check soak

demo: $(STAMP)
	$(VENV)/bin/writevue demo

test: $(STAMP) chromium nginx
	$(PY) -m pytest $(PYTEST_ARGS)

# The production layout in deploy/ started on this machine (its own PostgreSQL databases,
# code server, webserver, one daemon, two dashboard processes, nginx with TLS) and checked
# end to end, then stopped: about 2-3 minutes. CI runs it after the tests (.ci/run).
production-check: $(STAMP) nginx
	$(PY) -m writevue_devtools.production_check

# The production check (and the soak behind nginx) run Debian's nginx; install it where we can.
NGINX := /usr/sbin/nginx
nginx:
	@if [ -x $(NGINX) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing nginx for the production check (apt-get)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) \
		|| echo "!! could not install nginx: the production check will fail"; \
	else echo "!! nginx not found at $(NGINX): the production check will fail"; fi

# The long forms of the reliability tests (pytest marker `soak`): kills of refreshes,
# erasures and key rotations, fuzzing of every connector. WRITEVUE_SOAK_KILLS (50) kills
# per scenario and database; WRITEVUE_SOAK_FUZZ_EXAMPLES (500) answers per connector.
# The normal `make test` runs their short forms and skips these (tests/conftest.py).
soak: $(STAMP) chromium nginx
	$(PY) -m pytest -m soak -p no:cacheprovider -rs $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	# The build backend pinned in pyproject.toml (older setuptools cannot read an SPDX licence).
	$(PY) -m pip install --quiet setuptools==80.10.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Browser tests drive Debian's Chromium; install it where we can (root with apt).
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Chromium for the browser tests (apt-get)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "!! could not install Chromium: browser tests will be skipped (or fail where required)"; \
	else echo "!! Chromium not found at $(CHROMIUM): browser tests will be skipped (or fail where required)"; fi

# Re-resolve the pinned set from pyproject.toml into requirements.lock.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet ".[dev,production]"
	(echo "# Pinned, resolved dependency set for WriteVue (runtime + dev tools). Regenerate with \`make lock\`."; \
	 .venv-lock/bin/pip freeze --exclude-editable | grep -v '^writevue') > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts

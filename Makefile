# Each target sets up what it needs: a .venv made with pip, the project installed into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Offline-friendly Prefect defaults (see README): no telemetry, patient startup on slow CPUs.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60
export MPLBACKEND ?= Agg
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The unit tests: no Prefect, no training subprocesses, no end-to-end runs (see pyproject's
# markers). `make test` runs everything, as CI does.
FAST_TESTS := -m "not slow and not integration"

.PHONY: install demo test test-fast lint bench clean

# pip --quiet keeps CI logs short but is silent for minutes on a first install (torch, MLflow,
# Prefect). Instead: say what happens, then name each package as pip starts on it, all on one
# line (a terminal watches it grow; a CI log gets one line). pip's errors (stderr) pass as they are.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its dependencies into $(VENV) (the first time takes several minutes)"
	$(PY) -m pip install --quiet --upgrade pip
	@{ $(PY) -m pip install --progress-bar off -e '.[dev]'; echo $$? > $(VENV)/.pip-status; } \
	  | { printf 'packages:'; while read -r word name rest; do \
	      case $$word in Collecting) printf ' %s' "$${name%%[<>=!~;[ ]*}";; \
	      Installing) printf ' (installing)';; esac; done; echo; }; \
	  status=$$(cat $(VENV)/.pip-status); rm -f $(VENV)/.pip-status; exit $$status
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rank1 demo

# The full suite in two pytest-xdist workers (one per core, each pinning torch to one thread
# as conftest does); --dist loadfile keeps a file's tests, and its module fixtures, together.
PARALLEL := -n 2 --dist loadfile

test: $(STAMP)
	@# pytest exits 5 when it collected no tests: that is a failure too.
	$(PY) -m pytest -q $(PARALLEL); status=$$?; \
	if [ $$status -eq 5 ]; then echo 'pytest ran no tests' >&2; exit 1; fi; exit $$status

test-fast: $(STAMP)
	$(PY) -m pytest -q $(FAST_TESTS); status=$$?; \
	if [ $$status -eq 5 ]; then echo 'pytest ran no tests' >&2; exit 1; fi; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/layers.py

clean:
	rm -rf $(VENV) outputs mlflow.db mlartifacts .pytest_cache

# Each target sets up what it needs: a .venv made with pip, the project installed into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Offline-friendly Prefect defaults (see README): no telemetry, patient startup on slow CPUs.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60
export MPLBACKEND ?= Agg
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rank1 demo

test: $(STAMP)
	@# pytest exits 5 when it collected no tests: that is a failure too.
	$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo 'pytest ran no tests' >&2; exit 1; fi; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/layers.py

clean:
	rm -rf $(VENV) outputs mlflow.db mlartifacts .pytest_cache

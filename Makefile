# Quick start: `make demo` (install + default simulation), `make test` (install + all tests).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: install demo test bench clean
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/servesim run workloads/default.yaml

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) bench/bench_core.py --repeat 3
	$(PY) bench/bench_fleet.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

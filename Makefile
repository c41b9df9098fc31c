# Every target sets itself up: a fresh clone needs only python3 (>=3.10) and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv demo test test-fast lint bench bench-full clean

help:
	@echo "make demo    - broker + generator + engine + dashboard on http://127.0.0.1:5006 (Ctrl-C stops all)"
	@echo "make test    - the whole pytest suite (unit + integration against a real broker, Dask, Panel, browser)"
	@echo "make bench   - every benchmark in quick mode; JSON in benchmarks/results/"
	@echo "make lint    - ruff and mypy"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# the parity scorers (nvForest CPU, Treelite) and the benchmark's rival routes are large: only test/bench pull them
$(VENV)/.installed-parity: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,parity]'
	touch $@

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/isostream demo --config configs/demo.yaml

test: $(VENV)/.installed-parity
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check engine streams training dashboards benchmarks tests
	$(BIN)/mypy

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --quick

bench-full: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache lake demo-lake

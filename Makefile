# Every target sets up what it needs; all are idempotent on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# numba's on-disk kernel cache, kept inside the tree so every entry point shares it.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: all venv install test test-tango demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Only the Tango tests (real database + Tpx3Server + simulator); they are part of `make test` too.
test-tango: $(STAMP)
	$(PY) -m pytest -q tests/test_tango_*.py

# Simulator -> Tango -> Karabo Bridge -> HDF5 + PNG in demo_output/ (~20 s; ~1 min while numba compiles).
demo: $(STAMP)
	$(PY) -m tpx3lib.demo

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .numba_cache build *.egg-info .pytest_cache

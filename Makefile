# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: demo test lint format venv lock clean

venv: $(STAMP)

# Re-install only when the dependencies or the lock change. Every version comes from the lock
# (a pip constraints file); a pyproject.toml edited without `make lock` stops here.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) scripts/lock.py --check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev,weights,slurm]"
	touch $(STAMP)

# Resolve pyproject.toml's dependencies afresh (under this machine's pip config) into the lock.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) scripts/lock.py

demo: $(STAMP)
	$(PY) train.py data=demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs/*/ .pytest_cache

# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench lint fuzz soak audit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/rxgate serve

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check validator workers tests

clean:
	rm -rf $(VENV) var .pytest_cache

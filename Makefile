# The two commands of the README's quick start:
#   make demo   back up, restore and compare a generated Schemaless datastore
#   make test   the whole test suite, starting the servers it needs
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/backstop demo

test: install
	$(VENV)/bin/ruff check .
	bash tests/servers/install.sh
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(VENV)/bin/python benchmarks/bench_schemaless_sqlite.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

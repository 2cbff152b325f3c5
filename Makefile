# The two commands of the README's quick start:
#   make demo   back up, restore and compare a generated Schemaless datastore
#   make test   the whole test suite, starting the servers it needs
VENV ?= .venv
PYTHON ?= python3
# Test worker processes (pytest-xdist); each starts its own servers and Prefect harness.
# A module's tests stay on one worker (--dist loadscope), so its session servers start once.
TEST_WORKERS ?= 4
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
	@# mysqlclient (MariaDB's fast path) compiles against libmariadb-dev, installed just above
	$(VENV)/bin/python -c 'import MySQLdb' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[mysql]'
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope --durations=25

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(VENV)/bin/python benchmarks/bench_fixed_cost.py
	$(VENV)/bin/python benchmarks/bench_schemaless_sqlite.py
	$(VENV)/bin/python benchmarks/bench_schemaless_sql.py
	$(VENV)/bin/python benchmarks/bench_zookeeper.py
	$(VENV)/bin/python benchmarks/bench_docstore.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# The load test (benchmarks/load/run.py): backup-and-restore cycles of every technology as
# flow runs on a real Prefect server and a process worker, 4 in flight, writers writing;
# the servers it needs come from tests/servers/install.sh. Report: benchmarks/results/load-*.
#   make load                                   short mode (a few minutes)
#   make load LOAD_ARGS='--mode soak --minutes 60'
LOAD_ARGS ?= --mode short
.PHONY: load
load: install
	$(VENV)/bin/python -m benchmarks.load $(LOAD_ARGS)

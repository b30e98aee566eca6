# postflow — the verbs. Every target installs what it needs first (see `install`).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.postflow-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test test-fast lint format bench lock clean up stack-test

help:
	@echo "make demo   - set up, generate demo posts and run posts_etl through Airflow for a few days"
	@echo "make test   - set up and run the whole test suite (lint, pytest, then make stack-test)"
	@echo "make bench  - performance figures (ratios against baselines measured in the same run)"
	@echo "make up     - Airflow UI :8080 + MLflow UI :5000 with postflow's DAGs (demo data if posts is empty); Ctrl-C stops"
	@echo "make stack-test - build the images and drive the compose stack end to end in Docker (root; part of test)"
	@echo "make lint   - ruff, and the import layers of ml/ (lint-imports)";  echo "make lock   - re-resolve requirements/constraints.txt from pyproject.toml"

$(STAMP): pyproject.toml requirements/constraints.txt scripts/system-deps.sh
	./scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[airflow,ml,dev]'
	@touch $@

install: $(STAMP)

# The tests also look at HTML (report, Airflow grid) in headless Chromium, and check that
# Debian's docker-compose (compose v1) reads the compose file.
TEST_STAMP := $(VENV)/.postflow-test-deps
$(TEST_STAMP): $(STAMP) scripts/system-deps.sh Makefile
	./scripts/system-deps.sh chromium docker-compose
	@touch $@

demo: install
	$(BIN)/python -m tools.demo $(DEMO_ARGS)

up: install
	$(BIN)/python -m tools.up $(UP_ARGS)

# The compose stack for real (tools/stack_test.py): Docker, images built on a debootstrap base
# from a wheelhouse, `up`, a user's path through the REST APIs, `down -v`. The last step of
# `test` (root: apt-get, dockerd); about 13 min from cold, 6 min with the images cached.
stack-test: install
	$(BIN)/python -m tools.stack_test $(STACK_ARGS)

test: install $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/python -m tools.stack_test $(STACK_ARGS)

test-fast: install $(TEST_STAMP)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Re-resolve the pins from pyproject.toml's dependencies and every extra, in a scratch venv.
lock:
	rm -rf /tmp/postflow-lock && $(PYTHON) -m venv /tmp/postflow-lock
	/tmp/postflow-lock/bin/pip install -q '.[airflow,ml,dev,mlflow-server]'
	{ echo "# Resolved versions of every package postflow installs (Python 3.11, Linux x86_64)."; \
	  echo "# Regenerate with 'make lock' after changing the dependencies in pyproject.toml."; \
	  /tmp/postflow-lock/bin/pip freeze --exclude postflow; } > requirements/constraints.txt

clean:
	rm -rf .postflow .pytest_cache .ruff_cache

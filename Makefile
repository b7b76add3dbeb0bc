# Local development on the embedded default: tiny CPU model, local Temporal, local S3.
# `make up` and `make test` do all their set-up themselves (scripts/setup.sh).

SHELL := bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The stack runs from the project's virtualenv locally (the image's /opt/venv on the box,
# where there is no .venv; the scripts find either by themselves too).
ifneq ($(wildcard $(VENV)/bin/python),)
export INSTANCE_VENV ?= $(abspath $(VENV))
endif
PYTEST_ARGS ?=

.PHONY: help setup up demo down status logs test test-unit lint bench bench-scale clean record-histories

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Virtualenv, requirements, llama-server build (cached), tiny model, system packages
	@bash scripts/setup.sh

$(PYTHON):
	@bash scripts/setup.sh

up: setup ## Start the whole stack locally and wait until /health is ok (sets up first)
	@bash scripts/up.sh

demo: up ## `make up`, then run the sample batch in examples/ and show its output
	@$(PYTHON) scripts/run_example.py examples/sample_batch.jsonl

down: ## Stop every service (no process left behind)
	@bash scripts/stop_services.sh

status: ## supervisord's view of every program ("not running" and an error when it is down)
	@bash scripts/supervisorctl.sh status

logs: ## Follow the API and worker logs (DATA_DIR/logs; `scripts/logs.sh PROGRAM` for others)
	@bash scripts/logs.sh

test: setup ## Run every test (unit, integration, end-to-end) against real servers
	@$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: $(PYTHON) ## Only the fast unit tests
	@$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(PYTHON) ## hadolint, shellcheck, workflow schema, ruff, mypy
	@VENV=$(VENV) bash scripts/lint.sh

record-histories: $(PYTHON) ## Re-record the workflow histories the replay test replays
	@$(PYTHON) -m tests.replay.record

bench: setup ## Throughput: pipeline vs direct llama-server, cold start, /process overhead
	@$(PYTHON) bench/throughput.py

bench-scale: setup ## 100,000 lines via llm-batch submit: memory, history, S3 use, ratio to direct
	@$(PYTHON) bench/scale.py

clean: down ## Stop everything and delete local data (S3 objects, Temporal history, logs)
	@bash scripts/clean.sh

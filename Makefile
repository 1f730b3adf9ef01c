# One venv for everything; `make run` and `make test` create it on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: help venv run test test-fast docker-e2e bench bench-full clean
.DEFAULT_GOAL := help

help: ## List the targets.
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

# hack/python-venv.sh first checks $(PYTHON) against pyproject's requires-python (and says what
# to run), and makes the venv again if another Python made it.
$(STAMP): pyproject.toml
	MAKECMDGOALS='$(MAKECMDGOALS)' hack/python-venv.sh '$(PYTHON)' '$(VENV)' '$(origin PYTHON)'
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[pipeline,operator,test]'
	touch $@

venv: $(STAMP) ## Create .venv with every pinned dependency.

run: venv ## Run produce -> Kafka -> train -> store -> sharded evaluation on one machine.
	$(PY) -m susy_pipeline run-local

test: venv tools ## Run the whole test suite (unit, broker, TensorFlow, operator, charts, containers).
	hack/with-docker.sh $(PY) -m pytest

docker-e2e: venv tools ## The container tests alone: the operator and every pod as Docker containers.
	hack/with-docker.sh $(PY) -m pytest -m docker tests/test_containers.py

test-fast: venv ## The tests not marked integration or slow (about 3 minutes on 2 cores).
	$(PY) -m pytest -m "not integration and not slow"

bench: venv ## Benchmarks against the seed report's figures (not tests).
	$(PY) -m bench

bench-full: venv ## The evaluator at the seed's size: 52 million rows, CSV.gz and Parquet, 2 shards (~15 GB disk).
	$(PY) bench/bench_evaluate.py --full

clean: ## Remove the venv, the embedded store and build outputs.
	rm -rf $(VENV) .susy build dist *.egg-info

include $(wildcard mk/*.mk)

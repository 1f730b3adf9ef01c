# Placeholder: replaced by the helm/kubectl installer (issue 7).
.PHONY: tools
tools: venv

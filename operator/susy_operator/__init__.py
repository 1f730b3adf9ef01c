"""susy_operator: a kopf operator that runs the SUSY pipeline's stages as Kubernetes Jobs.

`python -m susy_operator --standalone -A` runs it (see docs/operator.md). The pure modules
(`crd`, `spec`, `builders`, `status`) import neither kopf nor a Kubernetes client.
"""
__version__ = "0.1.0"

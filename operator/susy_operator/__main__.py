"""`python -m susy_operator [kopf run options]`: kopf's `run` command with our handlers module.

Every option of `kopf run` passes through, e.g. `--standalone -A --liveness=http://0.0.0.0:8080/healthz`
or `--standalone --namespace team-a`. With neither `-n` nor `-A`, kopf serves all namespaces and warns.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

HANDLERS_MODULE = "susy_operator.handlers"


def main(argv: Sequence[str] | None = None) -> None:
    import kopf.cli

    args = list(sys.argv[1:] if argv is None else argv)
    kopf.cli.main(args=["run", "--module", HANDLERS_MODULE, *args], prog_name="susy-operator")


if __name__ == "__main__":
    main()

"""Entry point for the operator under test: `python -m support.login [kopf run options]`.

The production operator logs in through kopf's default (in-cluster or kubeconfig). Here a login
handler points both kopf and the operator's kubernetes client at the API emulator; registering
any login handler turns kopf's defaults off. The kubernetes client reads KUBECONFIG when it is
imported, so configuring it explicitly (`k8s.configure(host=...)`) is the only safe way.
"""
from __future__ import annotations

import os
from typing import Any

import kopf

from susy_operator import k8s

SERVER = os.environ["SUSY_TEST_API_SERVER"]


@kopf.on.login()
def login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
    k8s.configure(host=SERVER)
    return kopf.ConnectionInfo(server=SERVER, insecure=True)


if __name__ == "__main__":
    from susy_operator.__main__ import main

    main()

"""`python -m susy_operator [run] [kopf run options]`: kopf's `run` command with our handlers module.

Every option of `kopf run` passes through, e.g. `--standalone -A --liveness=http://0.0.0.0:8080/healthz`
or `--standalone --namespace team-a`. With neither `-n` nor `-A`, kopf serves all namespaces and warns.

`python -m susy_operator release-finalizers (--namespace NS | --all-namespaces)` is the chart's
pre-delete hook: it releases every TrainingRun and EvaluationRun from kopf's finalizer, so that
they (and their namespace) can still be deleted once the operator is gone (finalizers.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

HANDLERS_MODULE = "susy_operator.handlers"
RELEASE_COMMAND = "release-finalizers"


def release_finalizers(namespace: str | None, *, attempts: int = 5) -> list[str]:
    """Release every CR that holds kopf's finalizer; the `plural/namespace/name` of each one released.

    A CR that changed between the list and the patch (409: the running operator wrote its status)
    is read again on the next pass; one still held after `attempts` passes raises RuntimeError, so
    the hook Job fails and `helm uninstall` says so.
    """
    from susy_operator import crd, finalizers, k8s, status as st

    released: list[str] = []
    for attempt in range(attempts):
        held = []
        for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL, crd.CONTINUAL_PLURAL):
            for obj in k8s.list_custom_objects(plural, namespace):
                patch = finalizers.release_patch(obj, st.now_rfc3339())
                if patch is None:
                    continue
                meta = obj["metadata"]
                where = f"{plural}/{meta['namespace']}/{meta['name']}"
                if k8s.merge_patch_custom_object(plural, meta["namespace"], meta["name"], patch):
                    released.append(where)
                    print(f"released {where}", file=sys.stderr)
                else:
                    held.append(where)
        if not held:
            return released
        time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"still held by kopf's finalizer after {attempts} tries: {', '.join(held)}")


def release_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"susy-operator {RELEASE_COMMAND}",
                                     description="Remove kopf's finalizer from every TrainingRun, "
                                                 "EvaluationRun and ContinualTraining (run before the operator is uninstalled).")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--namespace", "-n", help="the namespace the operator serves")
    where.add_argument("--all-namespaces", "-A", action="store_true", help="every namespace")
    args = parser.parse_args(argv)
    released = release_finalizers(None if args.all_namespaces else args.namespace)
    print(f"released {len(released)} custom resources from kopf's finalizer")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [RELEASE_COMMAND]:
        sys.exit(release_main(args[1:]))
    if args[:1] == ["run"]:  # `susy-operator run ...`, as kopf's help spells it, means the same
        args = args[1:]
    if args[:1] in (["--help"], ["-h"]):
        print(f"susy-operator: the SUSY operator.\n\n  susy-operator [run] [OPTIONS]          run it (kopf run's "
              f"options, below)\n  susy-operator {RELEASE_COMMAND} --help   the uninstall hook's command\n")
    import kopf.cli

    kopf.cli.main(args=["run", "--module", HANDLERS_MODULE, *args], prog_name="susy-operator")


if __name__ == "__main__":
    main()

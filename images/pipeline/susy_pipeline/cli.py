"""Command line: `python -m susy_pipeline <command>`; see docs/contracts.md.

Each command logs progress to stderr and, on success, prints one JSON
document on stdout. Exit codes: 0 success, 2 bad input (data file, options,
unknown model, a missing object or refused credentials), 3 a dependency
unreachable after bounded retries (Kafka, store, object storage, network), 1 other.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Sequence

from . import errors, redaction
from .commands import aggregate, download, evaluate, models, produce, report, run_local, scale, train

# Each command module has add_parser(subparsers) and run(args); none imports this module.
COMMANDS = (download, produce, train, evaluate, aggregate, scale, report, models, run_local)

EXIT_OK = 0  # the failure codes are in errors.py, on the errors themselves

# Where Kubernetes reads a container's termination message (the pod's terminationMessagePath,
# default /dev/termination-log): the kubelet puts it in containerStatuses[].state.terminated.message
# and the operator copies it into the CR's Failed condition and Event. Tests point it elsewhere.
TERMINATION_LOG_ENV = "SUSY_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TRACEBACK_CHARS = 64 << 10


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="susy-pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # every line, ours or a library's, redacted
        handler.addFilter(redaction.RedactingFilter())
    for noisy in ("kafka", "absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        result = args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # one clear line, then the exit code that says what kind
        code = errors.exit_code(err)
        if code == errors.EXIT_FAILED:  # not foreseen: a bug until shown otherwise, so the traceback
            print(redaction.scrub(traceback.format_exc(), limit=TRACEBACK_CHARS), file=sys.stderr)
        else:
            logging.getLogger("susy_pipeline").debug("failure", exc_info=True)
        print(f"error: {redaction.scrub(str(err))}", file=sys.stderr)
        write_termination_message(err)
        if getattr(err, "abandons_threads", False):
            # A hung tensorflow-io read thread cannot be stopped; leave without joining it.
            sys.stderr.flush()
            os._exit(code)
        return code
    if result is not None:
        print(json.dumps(result, default=str))
    return EXIT_OK


def write_termination_message(err: BaseException) -> None:
    """The failure as one redacted, bounded line where Kubernetes reads a termination message.

    Skipped when the file's directory does not exist (not in a pod: a command run by hand)."""
    path = os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG
    if not os.path.isdir(os.path.dirname(path) or "."):
        return
    foreseen = isinstance(err, errors.PipelineError)
    text = str(err) if foreseen else f"{type(err).__name__}: {err}"
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(redaction.one_line(text))
    except OSError as write_err:  # a read-only or missing /dev/termination-log: the log still has it
        logging.getLogger("susy_pipeline").debug("no termination message written to %s: %s", path, write_err)

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

from . import errors
from .commands import aggregate, download, evaluate, models, produce, report, run_local, scale, train

# Each command module has add_parser(subparsers) and run(args); none imports this module.
COMMANDS = (download, produce, train, evaluate, aggregate, scale, report, models, run_local)

EXIT_OK = 0  # the failure codes are in errors.py, on the errors themselves


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
            traceback.print_exc(file=sys.stderr)
        else:
            logging.getLogger("susy_pipeline").debug("failure", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        if getattr(err, "abandons_threads", False):
            # A hung tensorflow-io read thread cannot be stopped; leave without joining it.
            sys.stderr.flush()
            os._exit(code)
        return code
    if result is not None:
        print(json.dumps(result, default=str))
    return EXIT_OK

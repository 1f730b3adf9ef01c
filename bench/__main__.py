"""`python -m bench` (`make bench`): the benchmarks, one after the other.

  python -m bench [NAME ...]     run the named ones (default: all), in this order:
                                 pipeline, kafka, evaluate, precision, models, object_storage,
                                 operator, heartbeats, continual
  python -m bench --help         this text; each script has its own --help
                                 (python bench/bench_NAME.py --help)

Benchmarks are not tests: they print tables, each speed as a ratio to a limit measured in the
same run where one exists, with the CPU named. Run them on a quiet machine.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("pipeline", "kafka", "evaluate", "precision", "models", "object_storage", "operator", "heartbeats",
         "continual")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    unknown = [a for a in argv if a not in NAMES]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    status = 0
    for name in argv or NAMES:
        status |= subprocess.call([sys.executable, os.path.join(HERE, f"bench_{name}.py")])
    return status


sys.exit(main(sys.argv[1:]))

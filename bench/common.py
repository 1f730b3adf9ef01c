"""What the benchmark scripts share: the CPU's name for every table, and the options of the scripts
that run evaluator shards over the scaled sample (bench_evaluate.py, bench_object_storage.py)."""
from __future__ import annotations

import argparse
import os
import resource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): machines of one kind differ up to 3x in speed."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A markdown table on stdout: what every benchmark prints."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
def store_env(store_uri: str) -> dict[str, str]:
    """This process's environment with the store URI as MONGODB_URI: a child process gets it there,
    never on its command line, which every user of the machine can read (ps, /proc/PID/cmdline)."""
    return {**os.environ, "MONGODB_URI": store_uri}


def process_cpu_seconds() -> float:
    """CPU seconds this process has used so far, every thread counted (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def add_shard_options(p: argparse.ArgumentParser, *, files_help: str, repeats_help: str) -> None:
    """--times, --files, --chunk-rows, --work, --store, --model, --repeats and --quick."""
    p.add_argument("--times", type=int, default=15, help="scale factor of the sample's test rows (default %(default)s)")
    p.add_argument("--files", type=int, default=2, help=f"{files_help} (default %(default)s)")
    p.add_argument("--chunk-rows", type=int, default=16_384, help="rows per model call (default %(default)s)")
    p.add_argument("--work", default=os.path.join(ROOT, ".susy", "bench-evaluate"),
                   help="where the scaled files and the store go (default %(default)s)")
    p.add_argument("--store", default=None, help="store URI (default: sqlite in --work)")
    p.add_argument("--model", default=None, help="model reference (default: train one)")
    p.add_argument("--repeats", type=int, default=3, help=f"{repeats_help} (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="--times 2, --repeats 1: check that the script works")

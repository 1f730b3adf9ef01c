"""`python -m bench` (`make bench`): every benchmark, one after the other.

Benchmarks are not tests: they print tables against the seed report's
figures. Run them on a quiet machine.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
status = 0
for script in ("bench_pipeline.py", "bench_evaluate.py"):
    status |= subprocess.call([sys.executable, os.path.join(HERE, script)])
sys.exit(status)

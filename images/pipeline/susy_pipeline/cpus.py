"""How many CPUs a stage may use, and TensorFlow's thread pools set to match.

The trainer, and the evaluator on CSV input, give TensorFlow's intra-op pool
the CPUs left after their input pipeline (`all_but_one`): on 2 cores, one
model thread beside the input thread measured faster than two contending with
it. Parquet costs the evaluator almost nothing to read, so there the model
gets every CPU.
"""
from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU limit (Kubernetes)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), _read(
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us") or "100000"])):
        text = _read(path)
        if not text:
            continue
        quota, period = parse(text)[:2]
        if quota not in ("max", "-1"):
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, n)


def all_but_one() -> int:
    """The CPUs left when one is kept for the input pipeline (at least 1)."""
    return max(1, available_cpus() - 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def configure_threads(model_threads: int) -> None:
    """`model_threads` intra-op threads for each model call (before TensorFlow starts)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(model_threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:
        # Already initialized (tests, or several stages in one process): its settings stay.
        log.warning("TensorFlow is already running; its thread settings (intra-op %s) stay",
                    tf.config.threading.get_intra_op_parallelism_threads() or "default")

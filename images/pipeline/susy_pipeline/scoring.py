"""Scoring one evaluator shard: read its rows, run the models, tally, store the shard result.

Shard `I` of `N` reads the rows `shards.plan_shard` gives it (whole files
round-robin; with fewer files than shards: Parquet row groups, CSV byte
ranges, CSV.gz row stripes). It streams them in fixed chunks of `--chunk-rows`
rows through the model, tallies the exact integer sums of `evaluation`, and
upserts the shard result into the store under (evaluation, shard index), so a
retried shard replaces its own result and is never counted twice. Bad input
raises `DataError` (file and line; exit code 2) before anything is stored.

Memory stays flat: a reader thread parses 1 MiB blocks into chunk buffers (at
most `--scoring-threads` + 1 chunks wait in its queue) while `--scoring-threads`
threads score them, each into its own tally of a few integers and two fixed
histograms; the tallies are merged at the end.

**Why every row's score is bit-identical however the rows are split.**
Measured here, TensorFlow's CPU kernels can give a row a score that differs
in the last bit with the batch size, the row's position in the batch, and the
number of intra-op threads. So:

- the forward pass is one `tf.function` traced for one shape,
  `[chunk_rows, 18]` (never `model.predict`, which was also 40% slower);
- row `r` of a file is always scored at position `r % chunk_rows` of its
  batch, whichever shard reads it and wherever its piece starts (positions no
  row of this shard fills are zeros).

A row is then computed by the same instructions in every split, so N shards
add up to exactly the single-process totals, given the same `--chunk-rows`
and `--model-threads` (TensorFlow's intra-op threads; the default depends
only on the CPUs the process may use and the input formats, so every pod of
one Job gets the same). `--scoring-threads` does not change any score. Chunks
of 16,384 rows scored about 2.5x faster per core than 65,536 here (the layer
activations stay in cache).
"""
from __future__ import annotations

import logging
import math
import resource
import socket
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import data, files
from .cpus import all_but_one, available_cpus, configure_threads
from . import precision as precision_lib
from . import shards as shards_lib
from .evaluation import (ENSEMBLE, ENSEMBLE_METHODS, HISTOGRAM_BINS, MAX_MODELS, RESULT_VERSION,
                         ModelTallies, ShardTally)
from .schema import DEFAULT_CHUNK_ROWS, N_FEATURES
from .streams import ReadAhead
from .errors import BadInput
from .redaction import echo
from .heartbeat import Heartbeat, heartbeat_seconds as default_heartbeat_seconds, shard_source
from .progress import Progress

log = logging.getLogger(__name__)

# Measured here: TensorFlow's CPU allocations (through glibc malloc) grow RSS by
# 120-170 MB over the first ~15 model calls and then stay flat. Making those
# calls before streaming keeps peak RSS and rows/s steady from the first row,
# for any data size. A fixed mmap threshold (mallopt) kept RSS flat too, but
# it cost 40% of the model's speed.
WARMUP_CALLS = 16
# Model calls in flight at once (see `_score_chunks`).
SCORING_THREADS = 2


def default_model_threads(paths: Sequence[str]) -> int:
    """TensorFlow threads for a shard over these inputs (the same for every shard of them).

    Parsing CSV costs more CPU per row than the model (about 3 against 2 us
    here) and runs on the one reader thread, so with any CSV input one CPU is
    left to the reader; Parquet costs almost nothing to read, so the model
    gets every CPU.
    """
    if all(data.file_format(p) == "parquet" for p in paths):
        return available_cpus()
    return all_but_one()


def make_scorer(model, chunk_rows: int) -> Callable[[np.ndarray], np.ndarray]:
    """features [chunk_rows, 18] -> float32 scores [chunk_rows], one traced shape."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([chunk_rows, N_FEATURES], tf.float32)])
    def forward(x):
        return tf.reshape(model(x, training=False), [-1])

    def score(features: np.ndarray) -> np.ndarray:
        return forward(features).numpy()

    return score


def make_multi_scorer(models: Sequence[Any], chunk_rows: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    """features -> one score array per model, each from its own traced function.

    One function per model, not one graph of all of them: each model's scores are then computed
    by exactly the instructions a one-model evaluation runs, so a model scores bit-identically
    alone and beside others (tests/test_multi_model.py holds that).
    """
    scorers = [make_scorer(m, chunk_rows) for m in models]

    def score(features: np.ndarray) -> list[np.ndarray]:
        return [s(features) for s in scorers]

    return score


class _Timed:
    """An iterator that adds the seconds spent producing each item to `seconds` (read + decode)."""

    def __init__(self, items: Iterator[Any]) -> None:
        self.items = items
        self.seconds = 0.0

    def __iter__(self) -> "_Timed":
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - t


def iter_chunks(pieces: Sequence[shards_lib.Piece], chunk_rows: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, slice | np.ndarray]]:
    """(labels, features [chunk_rows, 18], where) per model call, aligned to the files' rows.

    Row `r` of a file always sits at position `r % chunk_rows` of the features
    buffer, whichever shard reads it and wherever its piece starts; positions
    no row of this shard fills stay zero. `where` selects the filled positions
    (a slice, or an index array when stripes leave gaps), in the order of
    `labels`. See the module docstring for why.
    """
    for piece in pieces:
        key = None
        labels: list[np.ndarray] = []
        spans: list[tuple[int, int]] = []
        features = None
        for batch in shards_lib.iter_piece(piece):
            taken, n = 0, len(batch)
            while taken < n:
                chunk, pos = divmod(batch.first_row + taken, chunk_rows)
                if chunk != key:
                    if key is not None:
                        yield _emit(labels, features, spans)
                    key, labels, spans = chunk, [], []
                    features = np.zeros((chunk_rows, N_FEATURES), np.float32)
                k = min(chunk_rows - pos, n - taken)
                features[pos:pos + k] = batch.features[taken:taken + k]
                labels.append(batch.labels[taken:taken + k])
                if spans and spans[-1][1] == pos:
                    spans[-1] = (spans[-1][0], pos + k)
                else:
                    spans.append((pos, pos + k))
                taken += k
        if key is not None:
            yield _emit(labels, features, spans)


def _emit(labels, features, spans):
    where = (slice(*spans[0]) if len(spans) == 1
             else np.concatenate([np.arange(a, b) for a, b in spans]))
    return np.concatenate(labels), features, where


def _score_chunks(chunks: Iterator[tuple[np.ndarray, np.ndarray, Any]], score, bins: int,
                  progress: Callable[[int], None], progress_seconds: float,
                  workers: int = 1, new_tally: Callable[[], Any] | None = None,
                  timing: dict[str, float] | None = None) -> Any:
    """Score and tally every chunk in `workers` threads; call `progress(rows)` every `progress_seconds`.

    Each thread takes the next chunk, scores it and adds it to its own tally;
    the tallies are integer sums, so merging them gives the same totals in
    any order. Two model calls in flight keep both cores busy through the gaps
    of one call (its Python, its copy out, the tally): measured here, 16,384-row
    calls of the tuned model on 2 cores ran at about 800k rows/s one at a time
    and 850k-1M rows/s two at a time, every score bit-identical.

    `score` returns one array, or a list of them (several models) for `new_tally`'s tallies
    (a `ModelTallies`); `timing["score_seconds"]` gets the seconds spent in `score`, summed
    over the threads.
    """
    new_tally = new_tally or (lambda: ShardTally(bins=bins))
    lock = threading.Lock()  # taking a chunk (may wait for the reader)
    progress_lock = threading.Lock()  # the shared row count, so counting never waits for the reader
    tallies = [new_tally() for _ in range(max(1, workers))]
    score_seconds = [0.0] * len(tallies)
    errors: list[BaseException] = []
    done, last = 0, time.monotonic()

    def take():
        with lock:
            if errors:
                return None
            return next(chunks, None)

    def work(slot: int) -> None:
        nonlocal done, last
        tally = tallies[slot]
        try:
            while (chunk := take()) is not None:
                labels, features, where = chunk
                t = time.perf_counter()
                out = score(features)
                score_seconds[slot] += time.perf_counter() - t
                tally.add(labels, out[where] if isinstance(out, np.ndarray) else [s[where] for s in out])
                with progress_lock:
                    done += len(labels)
                    if time.monotonic() - last >= progress_seconds:
                        last = time.monotonic()
                        progress(done)
        except BaseException as err:  # re-raised in the calling thread
            errors.append(err)  # list.append is atomic; `take` stops every thread at its next chunk

    threads = [threading.Thread(target=work, args=(i,), name=f"scorer-{i}", daemon=True)
               for i in range(1, len(tallies))]
    for thread in threads:
        thread.start()
    work(0)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if timing is not None:
        timing["score_seconds"] = timing.get("score_seconds", 0.0) + sum(score_seconds)
    total = new_tally()
    for tally in tallies:
        total.merge(tally)
    return total


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _references(model_ref: str | Sequence[str], ensemble: str | None) -> list[str]:
    refs = [model_ref] if isinstance(model_ref, str) else [str(r) for r in model_ref]
    if not refs or any(not r for r in refs):
        raise BadInput("--model is required (a model id, an ISO-8601 timestamp, latest:RUN or alias:NAME)")
    if len(refs) > MAX_MODELS:
        raise BadInput(f"--model is given {len(refs)} times; one evaluation scores at most {MAX_MODELS} models")
    twice = sorted({r for r in refs if refs.count(r) > 1})
    if twice:
        raise BadInput(f"--model {twice[0]} is given twice")
    if ENSEMBLE in refs:
        raise BadInput(f"--model {ENSEMBLE}: that name is the ensemble's")
    if ensemble is not None and ensemble not in ENSEMBLE_METHODS:
        raise BadInput(f"--ensemble {echo(ensemble)}: known: {', '.join(ENSEMBLE_METHODS)}")
    if ensemble is not None and len(refs) < 2:
        raise BadInput("--ensemble needs at least two --model")
    return refs


def _resolve(store, refs: Sequence[str]) -> list[str]:
    """The model id of every reference, in order; an unknown one fails naming it (nothing stored)."""
    from .store import ModelNotFound

    ids = []
    for ref in refs:
        try:
            ids.append(str(store.resolve_model(ref)["model_id"]))
        except ModelNotFound as err:
            raise ModelNotFound(f"--model {ref}: {err}" if len(refs) > 1 else str(err)) from None
    return ids


def evaluate_shard(store, *, model_ref: str | Sequence[str], inputs: Sequence[str], evaluation: str,
                   shard_index: int,
                   shard_count: int, skip: int = 0, limit: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   stripe_rows: int = shards_lib.STRIPE_ROWS, model_threads: int | None = None,
                   scoring_threads: int = SCORING_THREADS, progress_seconds: float = 10.0,
                   bins: int = HISTOGRAM_BINS, model=None, model_record: dict | None = None,
                   models: Sequence[tuple[Any, dict]] | None = None, ensemble: str | None = None,
                   warmup_calls: int = WARMUP_CALLS, heartbeat_seconds: float | None = None,
                   precision: str = "auto", allow_bf16: bool = False,
                   cpu_flags: frozenset[str] | None = None) -> dict[str, Any]:
    """Score one shard with every model `model_ref` names, upsert its result into `store`, and
    return the result.

    `model`/`model_record` (one model) or `models` (a (Keras model, record) per reference) skip
    loading from the store (tests, benchmarks). While it scores, a heartbeat (rows done and
    planned, rows/s) goes to the store every `heartbeat_seconds` (default SUSY_HEARTBEAT_SECONDS
    or 5 s; 0: none), and progress to stderr (`progress.Progress`). Raises `data.DataError` on bad input (file and
    line) and `ModelNotFound` naming an unknown reference, before anything is stored.

    `precision` (auto, fp32, bf16) with the run's `allow_bf16` opt-in and the CPU's flags
    (`cpu_flags`, default /proc/cpuinfo's) decide the precision every model computes in
    (precision.decide); the result records it, and `aggregate` refuses to merge shards of
    different precisions.
    """
    from .store import utc_now

    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise BadInput(f"--shard-index {shard_index} must be in 0..{shard_count - 1} "
                         f"(--shard-count {shard_count})")
    if chunk_rows < 1:
        raise BadInput(f"--chunk-rows must be >= 1, got {chunk_rows}")
    if scoring_threads < 1:
        raise BadInput(f"--scoring-threads must be >= 1, got {scoring_threads}")
    if not evaluation:
        raise BadInput("an evaluation name is required")
    started_at = utc_now()
    t0 = time.monotonic()
    data.forget_remote_metadata()
    fetched = files.remote_read_totals()  # planning reads Parquet footers too
    paths = shards_lib.resolve_inputs(inputs)
    ranges = shards_lib.row_ranges(paths, skip, limit) if skip or limit is not None else None
    pieces = shards_lib.plan_shard(paths, shard_index, shard_count, stripe_rows=stripe_rows, ranges=ranges)
    plan_id = shards_lib.plan_id(paths, shard_count, stripe_rows=stripe_rows, skip=skip, limit=limit)
    name = f"evaluate {evaluation} shard {shard_index}/{shard_count}"
    log.info("%s: %d of %d input files, %d pieces", name, len({p.path for p in pieces}), len(paths),
             len(pieces))

    refs = _references(model_ref, ensemble)
    decision = precision_lib.decide(precision, allow_bf16=allow_bf16,
                                    flags=precision_lib.cpu_flags() if cpu_flags is None else cpu_flags)
    log.info("%s: computing in %s (%s)", name, decision.precision, decision.reason)
    model_threads = model_threads or default_model_threads(paths)
    configure_threads(model_threads)
    if models is None and model is not None:
        models = [(model, model_record or {})]
    if models is None:
        from .model import model_from_bytes

        ids = _resolve(store, refs)
        distinct = list(dict.fromkeys(ids))  # references to one model: scored once
        # Claim every model before loading it: `models delete` refuses while this evaluation has
        # fewer shard results for it than shards (store.claim_model).
        for model_id in distinct:
            store.claim_model(evaluation, model_id, shard_count)
        loaded = {}
        for model_id in distinct:
            record, keras_bytes = store.load_model(model_id)
            loaded[model_id] = (model_from_bytes(keras_bytes), record)
    else:
        if len(models) != len(refs):
            raise BadInput(f"{len(models)} models given for {len(refs)} references")
        ids = [str((record or {}).get("model_id") or ref) for ref, (_, record) in zip(refs, models)]
        distinct = list(dict.fromkeys(ids))
        loaded = {i: m for i, m in zip(ids, models)}
    loaded = {key: (precision_lib.with_precision(keras_model, decision.precision), record)
              for key, (keras_model, record) in loaded.items()}
    column = {model_id: k for k, model_id in enumerate(distinct)}

    def stored_id(key: str) -> str | None:
        return (loaded[key][1] or {}).get("model_id")

    single = len(refs) == 1 and ensemble is None
    score = (make_scorer(loaded[distinct[0]][0], chunk_rows) if single
             else make_multi_scorer([loaded[i][0] for i in distinct], chunk_rows))

    def new_tally():
        return ShardTally(bins=bins) if single else ModelTallies(len(distinct), ensemble, bins)

    # Trace, and let the allocator settle in every scoring thread, outside the timed part.
    warmup = (np.zeros(0, np.float32), np.zeros((chunk_rows, N_FEATURES), np.float32), slice(0, 0))
    _score_chunks(iter([warmup] * max(1, warmup_calls)), score, bins, lambda rows: None, math.inf,
                  workers=scoring_threads, new_tally=new_tally)
    startup = time.monotonic() - t0
    log.info("%s: model%s %s loaded in %.1f s", name, "" if len(distinct) == 1 else "s",
             ", ".join(distinct), startup)

    planned, exact = shards_lib.planned_shard_rows(pieces)
    progress = Progress(name, planned, estimated=not exact, log_every_s=progress_seconds, logger=log)

    def beat(finished: bool = False) -> dict[str, Any]:
        return {"kind": "shard", "shard_index": shard_index, "shard_count": shard_count,
                "rows_done": progress.done, "rows_planned": progress.done if finished else planned,
                "rows_planned_estimated": not (exact or finished),
                "rows_per_second": round(progress.rate(), 1), "started_at": started_at,
                "finished": finished}

    # Started (its first write, 0 rows) before the clock: the shard's rows/s counts streaming only.
    heartbeat = Heartbeat(store, evaluation, shard_source(shard_index), beat,
                          default_heartbeat_seconds(heartbeat_seconds)).start()
    t1 = time.monotonic()
    cpu1 = _cpu_seconds()
    timing: dict[str, float] = {}
    reading = _Timed(iter_chunks(pieces, chunk_rows))
    try:
        with ReadAhead(reading, depth=scoring_threads + 1, name="shard-reader") as chunks:
            progress.started = t1
            # Every chunk counts (a few ns); `progress` and the heartbeat thread decide how often
            # anyone hears of it.
            tallies = _score_chunks(chunks, score, bins, progress.update, 0.0, workers=scoring_threads,
                                    new_tally=new_tally, timing=timing)
    finally:
        progress.close()
        heartbeat.stop()
    seconds = time.monotonic() - t1
    if single:
        tally, entries = tallies, None
    else:
        tally = tallies.tallies[column[ids[0]]]
        entries = [{"name": ref, "model_ref": ref, "model_id": stored_id(model_id),
                    **tallies.tallies[column[model_id]].counts()} for ref, model_id in zip(refs, ids)]
        if ensemble:
            entries.append({"name": ENSEMBLE, "model_ref": ENSEMBLE, "model_id": None, "ensemble": ensemble,
                            "members": [stored_id(i) for i in distinct], **tallies.tallies[-1].counts()})
    cpu_seconds = _cpu_seconds() - cpu1
    fetched = {k: v - fetched[k] for k, v in files.remote_read_totals().items()}
    rows_per_second = tally.rows / seconds if seconds > 0 else 0.0
    log.info("%s: %d rows in %.2f s, %.0f rows/s", name, tally.rows, seconds, rows_per_second)
    if fetched["reads"]:
        log.info("%s: fetched %d bytes from object storage in %d ranged reads", name, fetched["bytes"],
                 fetched["reads"])

    result = {
        "version": RESULT_VERSION,
        "evaluation": evaluation,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "model_id": stored_id(ids[0]),
        "model_ref": refs[0],
        "plan_id": plan_id,
        # What every model computed in, what was asked, and why (precision.decide): shards of
        # different precisions do not add up (evaluation.aggregate refuses them).
        "precision": decision.precision,
        "precision_requested": decision.requested,
        "precision_reason": decision.reason,
        "inputs": [piece.describe() for piece in pieces],
        "skip": skip,
        "limit": limit,
        **tally.counts(),
        **({"models": entries, "ensemble": ensemble} if entries is not None else {}),
        "seconds": seconds,
        # Where the time went: reading + decoding the rows (once, whatever the number of models)
        # on the reader thread, and the model calls, summed over the scoring threads.
        "read_seconds": reading.seconds,
        "score_seconds": timing.get("score_seconds", 0.0),
        "models_scored": len(distinct),
        "rows_per_second": rows_per_second,
        "startup_seconds": startup,
        # CPU time while streaming: rows / cpu_seconds is a per-core rate that a busy machine skews less.
        "cpu_seconds": cpu_seconds,
        "chunk_rows": chunk_rows,
        "model_threads": model_threads,
        "scoring_threads": scoring_threads,
        "peak_rss_bytes": peak_rss_bytes(),
        # What this shard fetched from object storage, planning included (0 for local files): about
        # 1/N of the data when each shard reads its own files or row groups (docs/evaluation.md).
        "remote_bytes_read": fetched["bytes"],
        "remote_reads": fetched["reads"],
        "host": socket.gethostname(),
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    result["heartbeats_written"] = heartbeat.writes
    store.put_shard_result(evaluation, shard_index, result)
    if heartbeat.every_s > 0:
        heartbeat.write({**beat(finished=True), "rows_per_second": round(rows_per_second, 1)})
    return result

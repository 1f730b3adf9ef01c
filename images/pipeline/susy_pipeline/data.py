"""Streaming reader for SUSY files in UCI layout: CSV, CSV.gz and Parquet.

Files are read in blocks with pyarrow, so memory stays flat whatever the file
size. Every row is validated; a bad row stops the read with a `DataError` that
names the file and the 1-based line (for Parquet: the 0-based row). Nothing is
dropped or repaired silently.

pyarrow's streaming CSV reader does not know line numbers when it fails, so on
any parse or conversion error the reader re-scans the failing block with plain
Python to find the exact line. That slow path runs only on bad input.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
from dataclasses import dataclass
from typing import IO, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import files
from .errors import BadInput, DataError
from .redaction import echo, scrub
from .schema import COLUMNS, N_COLUMNS, N_FEATURES

DEFAULT_BLOCK_BYTES = 1 << 20  # 1 MiB blocks kept RSS flat here; 16 MiB grew it by half
# A line longer than a block is refused by pyarrow ("straddling object straddles two block
# boundaries"), so the block is also the longest line read; the slow path that names a bad line
# reads a longer one in these pieces, only to count its length.
LINE_PIECE_BYTES = 1 << 20


@dataclass(frozen=True)
class Batch:
    """A block of rows: float32 labels [n] and features [n, 18].

    `first_row` is the 0-based index in its file of the first row. When read
    with `keep_text=True`, `label_text` and `feature_text` hold the rows as
    `feature_text` holds each row's 18 features as written in the file, joined
    by commas, so a producer forwards them without a float-to-text round trip.
    """

    labels: np.ndarray
    features: np.ndarray
    first_row: int
    feature_text: pa.Array | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def file_format(path: str | os.PathLike) -> str:
    """'parquet', 'csv.gz' or 'csv', from the file name."""
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".gz"):
        return "csv.gz"
    return "csv"


def iter_batches(path: str | os.PathLike, *, skip: int = 0, limit: int | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES, keep_text: bool = False) -> Iterator[Batch]:
    """Yield validated batches of rows `skip` .. `skip + limit - 1` of one file."""
    if skip < 0 or (limit is not None and limit < 0):
        raise BadInput(f"skip and limit must be >= 0, got skip={skip}, limit={limit}")
    files.require(str(path))
    if file_format(path) == "parquet":
        batches = _iter_parquet(path, skip, keep_text)
    else:
        batches = _iter_csv(path, skip, block_bytes, keep_text)
    produced = 0
    for batch in batches:
        if limit is not None and produced + len(batch) >= limit:
            yield _head(batch, limit - produced)
            produced = limit
            break
        produced += len(batch)
        yield batch
    if produced == 0 and limit != 0:
        problem = "no data rows (empty file)" if skip == 0 else f"no data rows after skipping {skip}"
        raise DataError(path, None, problem)


def count_rows(path: str | os.PathLike) -> int:
    """Number of data rows in a file (validating them on the way)."""
    return sum(len(b) for b in iter_batches(path))


def check_batch(labels: np.ndarray, features: np.ndarray, *, path: str | os.PathLike,
                first_line: int, unit: str = "line") -> None:
    """Raise DataError for the first non-finite value or label outside {0, 1}."""
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(path, first_line + int(row),
                        f"column {int(col) + 2} ({COLUMNS[int(col) + 1]}) is {str(float(features[row, col]))!r}, "
                        "not a finite number", unit)
    bad_label = (labels != 0) & (labels != 1)
    if bad_label.any():
        row = int(np.argmax(bad_label))
        raise DataError(path, first_line + row, f"label is {str(float(labels[row]))!r}, expected 0 or 1", unit)


def _head(batch: Batch, n: int) -> Batch:
    return Batch(batch.labels[:n], batch.features[:n], batch.first_row,
                 None if batch.feature_text is None else batch.feature_text[:n])


# --- CSV -------------------------------------------------------------------

def _iter_csv(path, skip: int, block_bytes: int, keep_text: bool) -> Iterator[Batch]:
    column_type = pa.string() if keep_text else pa.float32()
    # pyarrow's own skip_rows must fit in the first block, so rows before
    # `skip` are read and dropped here instead (they must still parse).
    # One thread: evaluator shards are held to one core each, and for the producer
    # pyarrow's threads measured no faster than its own read-ahead thread.
    read_options = pacsv.ReadOptions(column_names=list(COLUMNS), block_size=block_bytes,
                                     use_threads=False)
    # Blank lines are rows too: skipping them would shift every line number after.
    parse_options = pacsv.ParseOptions(ignore_empty_lines=False)
    convert_options = pacsv.ConvertOptions(column_types={c: column_type for c in COLUMNS},
                                           strings_can_be_null=False, quoted_strings_can_be_null=False)
    row = 0
    source, opened = _open_binary(path)
    try:
        reader = pacsv.open_csv(source, read_options=read_options, parse_options=parse_options,
                                convert_options=convert_options)
        for record_batch in reader:
            n = record_batch.num_rows
            if row + n <= skip:
                row += n
                continue
            start = max(0, skip - row)
            batch = _csv_batch(record_batch.slice(start), row + start, keep_text)
            check_batch(batch.labels, batch.features, path=path, first_line=row + start + 1)
            row += n
            yield batch
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError) as err:
        if "Empty CSV file" in str(err) and row == 0:
            return  # reported by iter_batches as an empty file
        _raise_located(path, row, err, max_line_bytes=block_bytes)
    finally:
        for f in opened:
            f.close()


def _csv_batch(record_batch: pa.RecordBatch, first_row: int, keep_text: bool) -> Batch:
    if any(column.null_count for column in record_batch.columns):
        # pyarrow reads a blank line as a row of nulls; let the slow path name it.
        raise pa.ArrowInvalid("empty values")
    if keep_text:
        feature_cols = record_batch.columns[1:]
        floats = [pc.cast(c, pa.float32()) for c in record_batch.columns]
        labels = floats[0].to_numpy(zero_copy_only=False)
        features = np.column_stack([c.to_numpy(zero_copy_only=False) for c in floats[1:]])
        feature_text = pc.binary_join_element_wise(*feature_cols, ",")
        return Batch(labels, features, first_row, feature_text)
    labels = record_batch.column(0).to_numpy(zero_copy_only=False)
    features = np.column_stack([c.to_numpy(zero_copy_only=False) for c in record_batch.columns[1:]])
    return Batch(labels, features.astype(np.float32, copy=False), first_row)


def _open_binary(path) -> tuple[object, list]:
    """The file to parse (a path pyarrow opens, or a file object) and what to close after.

    .gz goes through ISA-L's igzip when installed, else pyarrow's own zlib
    (Python's for a remote file). Measured here on 90,000 SUSY rows: igzip
    decompressed in 0.07 s against 0.16 s, and the whole float parse took
    0.19 s against 0.29 s. A single gzip stream is the evaluator's and the
    producer's limit on CSV.gz. A remote file is a buffered stream from
    `files` (one GET per 8 MiB).
    """
    gz = file_format(path) == "csv.gz"
    if not files.is_remote(str(path)):
        local = files.local_path(str(path))
        if gz:
            try:
                from isal import igzip
            except ImportError:
                return local, []
            f = igzip.open(local, "rb")
            return f, [f]
        return local, []
    raw = files.open_stream(str(path))
    if not gz:
        return raw, [raw]
    try:
        from isal import igzip
        unzipped = igzip.IGzipFile(fileobj=raw, mode="rb")
    except ImportError:
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
    return unzipped, [unzipped, raw]


def _open_lines(path) -> IO[bytes]:
    raw = files.open_stream(str(path))
    if file_format(path) == "csv.gz":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def _lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """Each line of a binary stream as (its bytes, its length); the bytes are None for a line
    longer than `max_bytes`, which is read on in pieces to count it, never held whole."""
    while piece := stream.readline(max_bytes + 1):
        if piece.endswith(b"\n") or len(piece) <= max_bytes:
            yield piece, len(piece.rstrip(b"\r\n"))
            continue
        length = len(piece)
        while piece and not piece.endswith(b"\n"):
            piece = stream.readline(LINE_PIECE_BYTES)
            length += len(piece)
        yield None, length - (1 if piece.endswith(b"\n") else 0)


def _raise_located(path, from_row: int, err: Exception, max_line_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
    """Find the first bad line at or after `from_row` and raise a DataError for it."""
    line_no = from_row
    try:
        with _open_lines(path) as f:
            for line_no, (line, length) in enumerate(_lines(f, max_line_bytes), start=1):
                if line_no <= from_row:
                    continue
                if line is None:
                    raise DataError(path, line_no, f"the line is {length:,} bytes long, over the limit of "
                                    f"{max_line_bytes:,} (a SUSY line is under 500 bytes)") from err
                problem = line_problem(line.decode("utf-8", errors="replace").rstrip("\r\n"))
                if problem:
                    raise DataError(path, line_no, problem) from err
    except (EOFError, OSError, gzip.BadGzipFile) as gz_err:
        raise DataError(path, line_no + 1,
                        f"compressed stream ends or breaks here ({scrub(str(gz_err))}); the file is truncated "
                        "or corrupt") from err
    raise DataError(path, None, f"unreadable after line {from_row}: {scrub(str(err))}") from err


def line_problem(text: str) -> str | None:
    fields = text.split(",")
    if len(fields) != N_COLUMNS:
        return f"expected {N_COLUMNS} columns, found {len(fields)}"
    for i, field in enumerate(fields):
        try:
            value = float(field)
        except ValueError:
            hint = " (SUSY files in UCI layout have no header line)" if i == 0 and field == COLUMNS[0] else ""
            return f"column {i + 1} ({COLUMNS[i]}) is {echo(field)}, not a number{hint}"
        if not math.isfinite(value) or not math.isfinite(np.float32(value)):
            return f"column {i + 1} ({COLUMNS[i]}) is {echo(field)}, not a finite number"
    if float(fields[0]) not in (0.0, 1.0):
        return f"label is {echo(fields[0])}, expected 0 or 1"
    return None


# --- Parquet ---------------------------------------------------------------

# Parquet is read page by page through a buffer of this size per column, in batches of
# PARQUET_BATCH_ROWS, so memory does not grow with the row group: reading 3M rows of SUSY floats
# written as one row group peaked at 413 MiB whole (pyarrow's default: the row group's column
# chunks read and pre-buffered at once), at 165 MiB streamed, against 134-178 MiB in 64K-row groups
# (VmHWM of a process that reads the file, pyarrow 25.0.1; docs/evaluation.md, "Memory").
PARQUET_BUFFER_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 65536
# A remote row group up to this size (compressed) is pre-buffered and the next one fetched while
# one is decoded: few large GETs, about two row groups in memory. A larger one is streamed like a
# local file (one GET per PARQUET_BUFFER_BYTES per column), slower but bounded.
REMOTE_PREFETCH_MAX_BYTES = 64 << 20


def open_parquet(path) -> pq.ParquetFile:
    """A Parquet file (local path, or a remote one read by ranged GETs through `files`), opened to
    be read in bounded memory whatever its row-group size."""
    path = str(path)
    try:
        if not files.is_remote(path):
            return pq.ParquetFile(files.local_path(path), buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
        # A shard opens a file it splits twice (to plan, to read); the footer is fetched once.
        metadata = _remote_parquet_metadata(path)
        source = files.open_random(path)
        if largest_row_group_bytes(metadata) <= REMOTE_PREFETCH_MAX_BYTES:
            return _RemoteParquetFile(source, metadata=metadata)
        return pq.ParquetFile(source, metadata=metadata, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(path, None, f"not a readable Parquet file: {scrub(str(err))}") from err


def largest_row_group_bytes(metadata: pq.FileMetaData) -> int:
    """The compressed size of the file's largest row group (what pre-buffering one holds)."""
    return max((sum(group.column(c).total_compressed_size for c in range(group.num_columns))
                for group in map(metadata.row_group, range(metadata.num_row_groups))), default=0)


class _RemoteParquetFile(pq.ParquetFile):
    """A Parquet file in object storage that fetches the next row group while one is decoded.

    Without it each row group's ranged GET waits for the one before to be
    scored. Measured here against moto on loopback (bench/bench_object_storage.py,
    1.5M rows in 2 files, 65,536-row groups, medians of 3 pairs): one shard ran
    at 0.82 of its local rows/s without, 0.90 with; a store across a network,
    with more latency per GET, gains more.
    """

    def __init__(self, source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.source = source

    def prefetch_row_group(self, group: int) -> None:
        chunks = [self.metadata.row_group(group).column(c) for c in range(self.metadata.num_columns)]
        starts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in chunks]
        stop = max(s + c.total_compressed_size for s, c in zip(starts, chunks))
        self.source.prefetch(min(starts), stop)


def forget_remote_metadata() -> None:
    """Drop cached remote Parquet footers (a shard starts fresh, so it counts the bytes it fetched)."""
    _remote_parquet_metadata.cache_clear()


@functools.lru_cache(maxsize=256)
def _remote_parquet_metadata(uri: str) -> pq.FileMetaData:
    try:
        with files.open_random(uri) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(uri, None, f"not a readable Parquet file: {scrub(str(err))}") from err


def _iter_parquet(path, skip: int, keep_text: bool) -> Iterator[Batch]:
    parquet = open_parquet(path)
    yield from iter_parquet_row_groups(parquet, range(parquet.num_row_groups), path=path,
                                       skip=skip, keep_text=keep_text)


def iter_parquet_row_groups(parquet: pq.ParquetFile, row_groups: Sequence[int], *, path,
                            skip: int = 0, keep_text: bool = False) -> Iterator[Batch]:
    """Yield validated batches from the given row groups (rows before `skip` are left out)."""
    names = parquet.schema_arrow.names
    if len(names) != N_COLUMNS:
        raise DataError(path, None, f"expected {N_COLUMNS} columns, found {len(names)}: {echo(names)}")
    offsets = np.concatenate([[0], np.cumsum([parquet.metadata.row_group(i).num_rows
                                              for i in range(parquet.num_row_groups)])])
    prefetch = getattr(parquet, "prefetch_row_group", None)
    wanted = [g for g in row_groups if offsets[g + 1] > skip]
    for k, group in enumerate(wanted):
        row = int(offsets[group])
        for i, record_batch in enumerate(parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group],
                                                              use_threads=False)):
            if i == 0 and prefetch is not None and k + 1 < len(wanted):
                # This group's bytes are in (pre-buffered before its first batch): fetch the next.
                prefetch(wanted[k + 1])
            n = record_batch.num_rows
            if row + n <= skip:
                row += n
                continue
            start = max(0, skip - row)
            batch = _parquet_batch(record_batch.slice(start), row + start, path, keep_text)
            check_batch(batch.labels, batch.features, path=path, first_line=row + start, unit="row")
            row += n
            yield batch


def _parquet_batch(record_batch: pa.RecordBatch, first_row: int, path, keep_text: bool) -> Batch:
    columns = []
    for i, column in enumerate(record_batch.columns):
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise DataError(path, None, f"column {i + 1} has type {column.type}, expected a number")
        if column.null_count:
            row = first_row + int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(path, row, f"column {i + 1} ({COLUMNS[i]}) is null", "row")
        columns.append(column.cast(pa.float32()).to_numpy(zero_copy_only=False))
    labels, features = columns[0], np.column_stack(columns[1:])
    if not keep_text:
        return Batch(labels, features, first_row)
    text = [pc.cast(pa.array(c), pa.string()) for c in columns[1:]]
    return Batch(labels, features, first_row, pc.binary_join_element_wise(*text, ","))


assert N_FEATURES == N_COLUMNS - 1

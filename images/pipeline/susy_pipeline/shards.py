"""Which rows each evaluator shard reads, and reading exactly those rows.

The rule, for shard `i` of `N` over the input files sorted by path:

1. **At least N files: whole files, round-robin.** File `j` goes to shard
   `j % N`. Every format is read sequentially from the start, no shard reads
   a byte another shard reads, and a `.csv.gz` (which has no random access)
   never needs splitting. `scale --files` writes the files this wants.
2. **Fewer files than shards (F < N): each file is split among its shards.**
   Shard `s` works on file `s % F`; the `k` shards of a file take parts
   `0..k-1` of it, in shard order:
   - **Parquet: by row groups.** A row group belongs to the part in whose
     share of the file's rows (`[total*m/k, total*(m+1)/k)`) its first row
     falls. Row groups are the unit Parquet can seek to, so a shard decodes
     only its own; a file with fewer row groups than parts leaves some parts
     empty (their shards report 0 rows, still correctly).
   - **Plain CSV: by byte ranges.** Part `m` owns the lines that *start* in
     bytes `[size*m/k, size*(m+1)/k)`. A shard seeks to its range, skips to
     the first line start, and reads through the end of the last line that
     starts inside. Line starts partition the file, so every line has
     exactly one owner whatever the range edges cut.
   - **CSV.gz: by row stripes.** Gzip has no random access, so no byte
     range can be found without decompressing everything before it. Row `r`
     belongs to part `(r // stripe_rows) % k` (`stripe_rows` = 65,536 by
     default). Each of these shards decompresses and parses the whole file and
     keeps its stripes: the split is correct, but it buys no speed. Stripes
     rather than contiguous row ranges because ranges need the row count,
     which costs another full pass. For speed, give at least N files.

**A row range** (`evaluate --skip S --limit L`) selects rows `[S, S+L)` of the
inputs taken together, in sorted path order. `row_ranges` maps it to a range of
file rows per file (counting the rows of the files before its end: Parquet from
its footer, CSV and CSV.gz by counting lines), files outside it drop out, and the
rule above splits what is left: whole files round-robin, Parquet row groups that
overlap the range by their share of its rows, plain CSV by the bytes of its range's
lines, CSV.gz stripes counted from the range's first row. Every piece then keeps
only its file's range, so N shards still score each selected row exactly once.

The plan is a pure function of the sorted paths, their sizes (and Parquet row
group sizes), the row range, N and `stripe_rows`. `plan_id` fingerprints those inputs; every
shard records it, and aggregation refuses shards that planned from different
inputs.

Every piece is validated as it is read (see `data`): a bad row fails the shard
with a `DataError` naming the file and its 1-based line (Parquet: 0-based row).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from . import data, files
from .data import Batch, DataError
from .schema import COLUMNS
from .errors import BadInput

STRIPE_ROWS = 65_536
_SCAN_BYTES = 1 << 16

WHOLE_FILE = "file"
ROW_GROUPS = "row_groups"
BYTE_RANGE = "byte_range"
ROW_STRIPES = "row_stripes"


@dataclass(frozen=True)
class Piece:
    """One part of one input file that a shard reads.

    `kind` is `file` (all of it), `row_groups` (Parquet groups `start..stop-1`),
    `byte_range` (CSV lines starting in bytes `start..stop-1`) or `row_stripes`
    (rows whose stripe `row // stripe_rows` is `part` modulo `parts`).
    """

    path: str
    format: str
    kind: str = WHOLE_FILE
    start: int = 0
    stop: int = 0
    part: int = 0
    parts: int = 1
    stripe_rows: int = STRIPE_ROWS
    # The file's rows this piece may yield: [first_row, end_row); end_row None is the file's end.
    first_row: int = 0
    end_row: int | None = None

    def describe(self) -> dict:
        out = {"path": self.path, "format": self.format, "kind": self.kind}
        if self.first_row or self.end_row is not None:
            out.update(first_row=self.first_row, end_row=self.end_row)
        if self.kind in (ROW_GROUPS, BYTE_RANGE):
            out.update(start=self.start, stop=self.stop)
        if self.kind == ROW_STRIPES:
            out.update(part=self.part, parts=self.parts, stripe_rows=self.stripe_rows)
        return out


# --- planning ------------------------------------------------------------------

def resolve_inputs(patterns: Sequence[str]) -> list[str]:
    """The input files that paths, URIs and globs name, sorted, each once (see `files.resolve`).

    Raises DataError for a pattern that matches no file.
    """
    return files.resolve(list(patterns))


def row_count(path: str) -> int:
    """Rows of one file: Parquet from its footer; CSV and CSV.gz by counting lines (one pass over
    the bytes, without parsing them; a blank line still fails when its piece is read)."""
    if data.file_format(path) == "parquet":
        return data.open_parquet(path).metadata.num_rows
    source, closers = data._open_binary(path)
    f = open(source, "rb") if isinstance(source, str) else source
    try:
        lines, last = 0, b"\n"
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
        return lines + (last != b"\n")
    finally:
        if isinstance(source, str):
            f.close()
        for c in closers:
            c.close()


Range = tuple[int, "int | None"]


# Bytes read from the start of a CSV (compressed bytes of a CSV.gz) to estimate its rows per
# byte for progress: 1 MiB holds ~3,800 SUSY rows, enough for an estimate within a few percent.
ESTIMATE_SAMPLE_BYTES = 1 << 20


def rows_per_byte(path: str) -> tuple[float, bool]:
    """(rows per stored byte, exact) of a CSV or CSV.gz, from its first ESTIMATE_SAMPLE_BYTES.

    Exact when the sample is the whole file (a plain CSV that small); a CSV.gz counts the lines
    its first compressed bytes decompress to. For progress only: no result depends on it.
    """
    import zlib

    size = files.size(path)
    # A remote head is kept for the reader that streams the file next: fetched once, not twice.
    sample = files.read_head(path, ESTIMATE_SAMPLE_BYTES)
    if not sample:
        return 0.0, True
    if data.file_format(path) == "csv.gz":
        text = zlib.decompressobj(wbits=31).decompress(sample)
        return text.count(b"\n") / len(sample), False
    lines = sample.count(b"\n") + (len(sample) == size and not sample.endswith(b"\n"))
    return lines / len(sample), len(sample) == size


def _stripe_rows_in(piece: Piece, end: int) -> int:
    """Rows of `[piece.first_row, end)` whose stripe belongs to the piece's part."""
    rows, stripe = 0, piece.first_row // piece.stripe_rows
    while stripe * piece.stripe_rows < end:
        if stripe % piece.parts == piece.part:
            lo = max(stripe * piece.stripe_rows, piece.first_row)
            rows += max(0, min((stripe + 1) * piece.stripe_rows, end) - lo)
        stripe += 1
    return rows


def planned_rows(piece: Piece, samples: dict[str, tuple[str, float, bool]] | None = None) -> tuple[int, bool]:
    """(rows the piece will yield, exact): exact from a Parquet footer or a counted row range, an
    estimate from bytes for CSV and CSV.gz (`rows_per_byte`). For progress and ETAs.

    `samples` (format -> (path sampled, rows per byte, exact)) shares one sample per format among
    a shard's pieces: a shard of many files waits for one read and keeps one head, not one each.
    """
    if piece.format == "parquet":
        sizes = _parquet_row_groups(piece.path)
        groups = range(piece.start, piece.stop) if piece.kind == ROW_GROUPS else range(len(sizes))
        end = sum(sizes) if piece.end_row is None else piece.end_row
        starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]
        return sum(max(0, min(starts[g + 1], end) - max(starts[g], piece.first_row)) for g in groups), True
    if piece.end_row is not None and piece.kind == WHOLE_FILE:
        return piece.end_row - piece.first_row, True
    if piece.end_row is not None and piece.kind == ROW_STRIPES:
        return _stripe_rows_in(piece, piece.end_row), True
    if samples is None:
        per_byte, exact = rows_per_byte(piece.path)
    else:
        if piece.format not in samples:
            samples[piece.format] = (piece.path, *rows_per_byte(piece.path))
        sampled, per_byte, exact = samples[piece.format]
        exact = exact and sampled == piece.path
    if piece.kind == BYTE_RANGE:
        return round((piece.stop - piece.start) * per_byte), False
    file_rows = round(files.size(piece.path) * per_byte)
    if piece.kind == ROW_STRIPES:
        return _stripe_rows_in(piece, file_rows), False
    return max(0, file_rows - piece.first_row), exact


def planned_shard_rows(pieces: Sequence[Piece]) -> tuple[int, bool]:
    """(rows a shard's pieces will yield, exact): the sum of `planned_rows`."""
    samples: dict[str, tuple[str, float, bool]] = {}
    counted = [planned_rows(p, samples) for p in pieces]
    return sum(n for n, _ in counted), all(exact for _, exact in counted)




def row_ranges(paths: Sequence[str], skip: int = 0, limit: int | None = None) -> dict[str, Range]:
    """{path: (first row, end row or None)} of the files that hold rows `[skip, skip+limit)` of the
    inputs taken together in this order; a file past the range is left out.

    Counts the rows of each file up to the one holding the range's end (none when there is no
    range). Raises BadInput when the range selects no row.
    """
    if skip < 0 or (limit is not None and limit < 1):
        raise BadInput(f"--skip must be >= 0 and --limit >= 1, got {skip} and {limit}")
    if skip == 0 and limit is None:
        return {p: (0, None) for p in paths}
    end = None if limit is None else skip + limit
    ranges: dict[str, Range] = {}
    base = 0
    for path in paths:
        if end is not None and base >= end:
            break
        n = row_count(path)
        first, stop = max(0, skip - base), n if end is None else min(n, end - base)
        if first < stop:
            ranges[path] = (first, None if stop == n else stop)
        base += n
    if not ranges:
        raise BadInput(f"--skip {skip}: the inputs have {base} rows, none in the range "
                       f"[{skip}, {'end' if end is None else end})")
    return ranges


def _line_start(path: str, row: int) -> int:
    """The byte offset where line `row` (0-based) of a plain CSV file starts."""
    if row == 0:
        return 0
    seen = 0
    with files.open_random(path) as f:
        offset = 0
        while block := f.read(1 << 24):
            count = block.count(b"\n")
            if seen + count >= row:
                i = -1
                for _ in range(row - seen):
                    i = block.index(b"\n", i + 1)
                return offset + i + 1
            seen += count
            offset += len(block)
    return offset


def _parquet_row_groups(path: str) -> list[int]:
    meta = data.open_parquet(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def _split_file(path: str, parts: int, stripe_rows: int, rows: Range = (0, None)) -> list[Piece]:
    """`parts` pieces that together cover every row of one file's range `rows` exactly once."""
    fmt = data.file_format(path)
    first, end = rows
    if parts == 1:
        return [Piece(path, fmt, first_row=first, end_row=end)]
    if fmt == "parquet":
        sizes = _parquet_row_groups(path)
        total = sum(sizes)
        if total == 0:
            raise DataError(path, None, "no data rows (empty file)")
        stop = total if end is None else end
        # A row group belongs to the part in whose share of the range its first row in the
        # range falls; groups outside the range belong to none.
        owner, start = [], 0
        for n in sizes:
            lo, hi = max(start, first), min(start + n, stop)
            owner.append((lo - first) * parts // (stop - first) if lo < hi else -1)
            start += n
        pieces = []
        for m in range(parts):
            groups = [g for g, o in enumerate(owner) if o == m]
            lo, hi = (groups[0], groups[-1] + 1) if groups else (0, 0)
            pieces.append(Piece(path, fmt, ROW_GROUPS, lo, hi, first_row=first, end_row=end))
        return pieces
    if fmt == "csv":
        size = files.size(path)
        if size == 0:
            raise DataError(path, None, "no data rows (empty file)")
        lo = _line_start(path, first) if first else 0
        hi = size if end is None else _line_start(path, end)
        return [Piece(path, fmt, BYTE_RANGE, lo + (hi - lo) * m // parts, lo + (hi - lo) * (m + 1) // parts,
                      first_row=first, end_row=end) for m in range(parts)]
    return [Piece(path, fmt, ROW_STRIPES, part=m, parts=parts, stripe_rows=stripe_rows,
                  first_row=first, end_row=end) for m in range(parts)]


def plan(paths: Sequence[str], shard_count: int, *, stripe_rows: int = STRIPE_ROWS,
         ranges: dict[str, Range] | None = None) -> list[list[Piece]]:
    """The pieces of every shard: `plan(...)[i]` is what shard `i` reads.

    `ranges` (from `row_ranges`) keeps only those files, and of each only its rows.
    """
    if shard_count < 1:
        raise BadInput(f"shard count must be >= 1, got {shard_count}")
    if stripe_rows < 1:
        raise BadInput(f"stripe_rows must be >= 1, got {stripe_rows}")
    paths = [p for p in paths if ranges is None or p in ranges]
    if not paths:
        raise BadInput("no input files")
    rows = ranges or {}
    shards: list[list[Piece]] = [[] for _ in range(shard_count)]
    if len(paths) >= shard_count:
        for j, path in enumerate(paths):
            first, end = rows.get(path, (0, None))
            shards[j % shard_count].append(Piece(path, data.file_format(path), first_row=first, end_row=end))
        return shards
    for f, path in enumerate(paths):
        mine = list(range(f, shard_count, len(paths)))
        for shard, piece in zip(mine, _split_file(path, len(mine), stripe_rows, rows.get(path, (0, None)))):
            shards[shard].append(piece)
    return shards


def plan_shard(paths: Sequence[str], shard_index: int, shard_count: int, *,
               stripe_rows: int = STRIPE_ROWS, ranges: dict[str, Range] | None = None) -> list[Piece]:
    """The pieces shard `shard_index` of `shard_count` reads."""
    if not 0 <= shard_index < shard_count:
        raise BadInput(f"shard index {shard_index} is outside 0..{shard_count - 1}")
    kept = [p for p in paths if ranges is None or p in ranges]
    if len(kept) >= shard_count:  # no need to open files that other shards read
        return [Piece(p, data.file_format(p), first_row=(ranges or {}).get(p, (0, None))[0],
                      end_row=(ranges or {}).get(p, (0, None))[1]) for p in kept[shard_index::shard_count]]
    return plan(kept, shard_count, stripe_rows=stripe_rows, ranges=ranges)[shard_index]


def plan_id(paths: Sequence[str], shard_count: int, *, stripe_rows: int = STRIPE_ROWS,
            skip: int = 0, limit: int | None = None) -> str:
    """A fingerprint of what the plan depends on: paths, sizes, row range, N, stripe size."""
    facts = {"shard_count": shard_count, "stripe_rows": stripe_rows,
             "files": [[p, files.size(p)] for p in paths]}
    if skip or limit is not None:  # unchanged for no range, so older shard results still match
        facts.update(skip=skip, limit=limit)
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


# --- reading -------------------------------------------------------------------

def iter_piece(piece: Piece, *, block_bytes: int = data.DEFAULT_BLOCK_BYTES) -> Iterator[Batch]:
    """Validated batches of exactly the rows a piece owns; `first_row` is the row's index in its file.

    For a `byte_range` piece that index costs a pass over the bytes before the
    range, counting newlines (memory or disk speed, about 1/20 of parsing them).
    """
    if piece.first_row == 0 and piece.end_row is None:
        yield from _iter_piece(piece, block_bytes)
        return
    lo_row, hi_row = piece.first_row, piece.end_row
    for batch in _iter_piece(piece, block_bytes):
        lo, hi = batch.first_row, batch.first_row + len(batch)
        if hi_row is not None and lo >= hi_row:
            break  # rows come in file order: nothing of the range follows
        a, b = max(lo, lo_row) - lo, (hi if hi_row is None else min(hi, hi_row)) - lo
        if a < b:
            yield batch if (a, b) == (0, len(batch)) else Batch(batch.labels[a:b], batch.features[a:b], lo + a)


def _iter_piece(piece: Piece, block_bytes: int) -> Iterator[Batch]:
    if piece.kind == WHOLE_FILE:
        yield from data.iter_batches(piece.path, block_bytes=block_bytes)
    elif piece.kind == ROW_GROUPS:
        if piece.stop > piece.start:
            parquet = data.open_parquet(piece.path)
            yield from data.iter_parquet_row_groups(parquet, range(piece.start, piece.stop),
                                                    path=piece.path)
    elif piece.kind == ROW_STRIPES:
        yield from _iter_stripes(piece, block_bytes)
    elif piece.kind == BYTE_RANGE:
        yield from _iter_byte_range(piece, block_bytes)
    else:
        raise ValueError(f"unknown piece kind {piece.kind!r}")


def _iter_stripes(piece: Piece, block_bytes: int) -> Iterator[Batch]:
    # Stripes are counted from the piece's first row, so a row range is spread over the parts too.
    size, origin = piece.stripe_rows, piece.first_row
    for batch in data.iter_batches(piece.path, block_bytes=block_bytes):
        lo, hi = batch.first_row, batch.first_row + len(batch)
        if piece.end_row is not None and lo >= piece.end_row:
            break
        if hi <= origin:
            continue
        stripe = (max(lo, origin) - origin) // size
        while origin + stripe * size < hi:
            if stripe % piece.parts == piece.part:
                a = max(lo, origin + stripe * size) - lo
                b = min(hi, origin + (stripe + 1) * size) - lo
                yield Batch(batch.labels[a:b], batch.features[a:b], lo + a)
            stripe += 1


class _Window(io.RawIOBase):
    """Bytes `start..stop-1` of a file, as a read-only stream."""

    def __init__(self, path: str, start: int, stop: int):
        self._f = files.open_random(path)
        self._f.seek(start)
        self._left = stop - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[:self._left]
        n = self._f.readinto(view)
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _next_line_start(f, pos: int, size: int) -> int | None:
    """The first position >= pos where a line starts, or None if no line starts
    there or later. A line starts at 0 and after every newline."""
    if pos == 0:
        return 0 if size > 0 else None
    f.seek(pos - 1)
    offset = pos - 1
    while offset < size:
        block = f.read(_SCAN_BYTES)
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            start = offset + i + 1
            return start if start < size else None
        offset += len(block)
    return None


def _count_lines_before(path: str, pos: int) -> int:
    lines = 0
    with files.open_random(path) as f:  # unbuffered remote reads: no byte past `pos`
        left = pos
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            lines += block.count(b"\n")
            left -= len(block)
    return lines


def byte_range_lines(path: str, start: int, stop: int) -> tuple[int, int]:
    """(first byte, end byte) of the lines that start in `[start, stop)`; equal if none."""
    size = files.size(path)
    with files.open_random(path) as f:
        first = _next_line_start(f, start, size)
        if first is None or first >= stop:
            return 0, 0
        end = _next_line_start(f, stop, size) if stop < size else size
        return first, size if end is None else end


def _iter_byte_range(piece: Piece, block_bytes: int) -> Iterator[Batch]:
    path = piece.path
    first, end = byte_range_lines(path, piece.start, piece.stop)
    if end <= first:
        return
    base = _count_lines_before(path, first)  # rows (and lines) before the range

    read_options = pacsv.ReadOptions(column_names=list(COLUMNS), block_size=block_bytes,
                                     use_threads=False)
    parse_options = pacsv.ParseOptions(ignore_empty_lines=False)
    convert_options = pacsv.ConvertOptions(column_types={c: pa.float32() for c in COLUMNS},
                                           strings_can_be_null=False, quoted_strings_can_be_null=False)
    row = 0  # rows of this piece read so far
    try:
        reader = pacsv.open_csv(_Window(path, first, end), read_options=read_options,
                                parse_options=parse_options, convert_options=convert_options)
        for record_batch in reader:
            if any(column.null_count for column in record_batch.columns):
                # A blank line reads as a row of nulls; the slow path names it.
                raise pa.ArrowInvalid("empty values")
            labels = record_batch.column(0).to_numpy(zero_copy_only=False)
            features = np.column_stack([c.to_numpy(zero_copy_only=False)
                                        for c in record_batch.columns[1:]]).astype(np.float32, copy=False)
            try:
                data.check_batch(labels, features, path=path, first_line=row + 1)
            except DataError as err:
                raise DataError(path, base + err.line, err.problem) from None
            yield Batch(labels, features, base + row)
            row += record_batch.num_rows
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        _raise_in_range(path, first, end, row, base, err)


def _raise_in_range(path: str, first: int, end: int, from_row: int, lines_before: int,
                    err: Exception) -> None:
    """Find the first bad line of the range at or after `from_row` and raise for it."""
    with _Window(path, first, end) as raw:
        text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace", newline="")
        for local, line in enumerate(text):
            if local < from_row:
                continue
            problem = data.line_problem(line.rstrip("\r\n"))
            if problem:
                raise DataError(path, lines_before + local + 1, problem) from err
    raise DataError(path, lines_before + from_row + 1, f"unreadable: {err}") from err

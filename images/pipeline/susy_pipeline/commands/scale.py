"""`scale`: write the sample's test rows repeated k times, as CSV.gz and Parquet.

The seed evaluated SUSY scaled 15x (about 52 million rows, 23.2 GB). The
sample shipped here has 10,000 UCI test rows (rows 10979-20978 of
`data/susy-sample.csv.gz`); `scale --times 15` writes them 15 times over, split
into `--files` files per format, so that sharded evaluation can be run and
benchmarked on one machine.

- Global row `r` of the scaled set is source row `r % n`; file `j` of `F`
  holds global rows `[T*j/F, T*(j+1)/F)` of `T = n*k`. Every file of one
  format therefore holds the same rows as the file of the same number in the
  other format.
- CSV.gz lines are the source lines byte for byte (no float round trip).
  Parquet columns are float32, named as in `schema.COLUMNS`, written in row
  groups of `--row-group-rows` rows.
- Only the source rows are held in memory (the sample's test rows: about
  4.5 MB of text); output is written in bounded blocks, and each file appears
  under its final name only when complete.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import logging
import os
import time
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import data, options
from .. import files as storage  # `files` is scale's option for the number of files
from ..schema import COLUMNS, SAMPLE_TRAIN_ROWS
from ..errors import BadInput
from ..progress import Progress

log = logging.getLogger(__name__)

DEFAULT_SOURCE = os.path.join("data", "susy-sample.csv.gz")
FORMATS = ("csv.gz", "parquet")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scale", help="write the sample's test rows repeated k times, as CSV.gz and Parquet",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=options.env("SUSY_SAMPLE", DEFAULT_SOURCE),
                   help="source file in UCI layout (env SUSY_SAMPLE; default %(default)s)")
    p.add_argument("--skip", type=int, default=SAMPLE_TRAIN_ROWS,
                   help="source rows to skip (default %(default)s: the sample's test rows follow)")
    p.add_argument("--limit", type=int, default=None, help="source rows to use (default: all after --skip)")
    p.add_argument("--times", type=int, default=15, help="how many times to repeat them (default %(default)s)")
    p.add_argument("--files", type=int, default=4, help="files per format (default %(default)s)")
    p.add_argument("--out", default=os.path.join(".susy", "scaled"),
                   help="output directory, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX "
                        "(default %(default)s)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--row-group-rows", type=int, default=65_536,
                   help="Parquet row group size (default %(default)s)")
    p.add_argument("--gzip-level", type=int, default=6, help="gzip level (default %(default)s)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    return scale(args.data, args.out, times=args.times, files=args.files, formats=formats,
                 skip=args.skip, limit=args.limit, row_group_rows=args.row_group_rows,
                 gzip_level=args.gzip_level)


def scale(source: str, out: str, *, times: int = 15, files: int = 4,
          formats: tuple[str, ...] | list[str] = FORMATS, skip: int = SAMPLE_TRAIN_ROWS,
          limit: int | None = None, row_group_rows: int = 65_536, gzip_level: int = 6) -> dict[str, Any]:
    """Write the scaled files; return what was written (paths, rows, bytes)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise BadInput(f"--formats: unknown format(s) {unknown}, expected a subset of {list(FORMATS)}")
    if times < 1 or files < 1 or row_group_rows < 1:
        raise BadInput("--times, --files and --row-group-rows must be >= 1")
    started = time.monotonic()
    lines, table = _read_source(source, skip, limit, need_table="parquet" in formats)
    n = len(lines)
    total = n * times
    if files > total:
        raise BadInput(f"{files} files for {total} rows: some files would be empty")
    storage.prepare_output_dir(out)
    written: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    with Progress(f"scale x{times}", total * len(formats), logger=log) as progress:
        for fmt in formats:
            written[fmt] = []
            for j in range(files):
                lo, hi = total * j // files, total * (j + 1) // files
                path = storage.join(out, f"susy-test-x{times}-{j:05d}-of-{files:05d}.{fmt}")
                with _output(path) as sink:
                    if fmt == "csv.gz":
                        _write_csv_gz(sink, lines, lo, hi, gzip_level, progress)
                    else:
                        _write_parquet(sink, table, lo, hi, row_group_rows, progress)
                written[fmt].append(path)
                log.info("scale: wrote %s (%d rows)", path, hi - lo)
            sizes[fmt] = sum(storage.size(p) for p in written[fmt])
    return {"source": source, "source_rows": n, "times": times, "rows": total, "files": written,
            "bytes": sizes, "seconds": round(time.monotonic() - started, 3)}


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    """A file that appears under `path` only when complete.

    Locally: written as `path.partial` and renamed. In a bucket: an S3
    multipart upload (or GCS resumable upload), which creates the object only
    when it completes, and is aborted on error.
    """
    if storage.is_remote(path):
        with storage.open_output(path) as sink:
            yield sink
        return
    local = storage.local_path(path)
    tmp = f"{local}.partial"
    with open(tmp, "wb") as sink:
        yield sink
    os.replace(tmp, local)


def _read_source(path: str, skip: int, limit: int | None, need_table: bool):
    """The source rows as raw lines (bytes, newline-terminated) and, if needed, a float32 table."""
    # Validate first, with file and line on any bad row, then take the text as is.
    batches = list(data.iter_batches(path, skip=skip, limit=limit))
    n = sum(len(b) for b in batches)
    if data.file_format(path) == "parquet":
        raise BadInput(f"{path}: scale reads a CSV or CSV.gz source")
    lines: list[bytes] = []
    with storage.open_stream(path) as raw, (gzip.GzipFile(fileobj=raw, mode="rb")
                                            if data.file_format(path) == "csv.gz" else raw) as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            if len(lines) == n:
                break
            lines.append(line if line.endswith(b"\n") else line + b"\n")
    table = None
    if need_table:
        labels = np.concatenate([b.labels for b in batches])
        features = np.concatenate([b.features for b in batches])
        arrays = [pa.array(labels, pa.float32())] + [pa.array(features[:, i], pa.float32())
                                                     for i in range(features.shape[1])]
        table = pa.Table.from_arrays(arrays, names=list(COLUMNS))
    return lines, table


def _cycle(n: int, lo: int, hi: int, block: int) -> Iterator[np.ndarray]:
    """Source row indices of global rows lo..hi-1, in blocks of at most `block`."""
    for a in range(lo, hi, block):
        yield np.arange(a, min(hi, a + block)) % n


def _write_csv_gz(sink: BinaryIO, lines: list[bytes], lo: int, hi: int, level: int,
                  progress: Progress) -> None:
    n = len(lines)
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=level) as f:
        for idx in _cycle(n, lo, hi, 65_536):
            f.write(b"".join(lines[i] for i in idx.tolist()))
            progress.advance(len(idx))


def _write_parquet(sink: BinaryIO, table: pa.Table, lo: int, hi: int, row_group_rows: int,
                   progress: Progress) -> None:
    with pq.ParquetWriter(sink, table.schema) as writer:
        for idx in _cycle(table.num_rows, lo, hi, row_group_rows):
            writer.write_table(table.take(pa.array(idx)), row_group_size=row_group_rows)
            progress.advance(len(idx))

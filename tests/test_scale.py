"""`scale`: the sample's test rows repeated k times, as CSV.gz and Parquet."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from susy_pipeline import data
from susy_pipeline.commands.scale import scale
from susy_pipeline.schema import COLUMNS, SAMPLE_TEST_ROWS, SAMPLE_TRAIN_ROWS

SAMPLE = "data/susy-sample.csv.gz"


def test_rows_are_the_test_rows_repeated_in_order(tmp_path):
    out = scale(SAMPLE, str(tmp_path), times=3, files=4, row_group_rows=4_096)
    assert out["rows"] == 3 * SAMPLE_TEST_ROWS
    with gzip.open(SAMPLE, "rb") as f:
        source = f.read().splitlines(keepends=True)[SAMPLE_TRAIN_ROWS:]
    written = b"".join(gzip.open(p, "rb").read() for p in out["files"]["csv.gz"])
    assert written == b"".join(source) * 3  # byte for byte, no float round trip
    sizes = [data.count_rows(p) for p in out["files"]["csv.gz"]]
    assert sizes == [7_500] * 4
    for gz, parquet in zip(out["files"]["csv.gz"], out["files"]["parquet"]):
        meta = pq.ParquetFile(parquet).metadata
        assert meta.num_rows == 7_500 and meta.row_group(0).num_rows == 4_096
        assert pq.ParquetFile(parquet).schema_arrow.names == list(COLUMNS)
        a = np.concatenate([b.features for b in data.iter_batches(gz)])
        b = np.concatenate([b.features for b in data.iter_batches(parquet)])
        assert np.array_equal(a, b)


def test_only_complete_files_appear(tmp_path):
    scale(SAMPLE, str(tmp_path), times=1, files=2, formats=["parquet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "susy-test-x1-00000-of-00002.parquet", "susy-test-x1-00001-of-00002.parquet"]
    with pytest.raises(ValueError, match="some files would be empty"):
        scale(SAMPLE, str(tmp_path), times=1, files=20_000, formats=["parquet"])


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "susy_pipeline", "scale", "--times", "2", "--files", "2",
                          "--formats", "csv.gz", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 * SAMPLE_TEST_ROWS and len(result["files"]["csv.gz"]) == 2

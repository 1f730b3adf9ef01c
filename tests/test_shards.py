"""Which rows each shard reads (`susy_pipeline.shards`): every row exactly once.

Inputs are the sample's UCI test rows, written by `scale` as several files and
as one file per format (plain CSV is the gunzipped CSV.gz). For N in 1, 2, 3,
7 the shards' rows, identified by (file, row index), must be every row of
every file exactly once, with the values the whole-file read gives.
"""
from __future__ import annotations

import gzip
import shutil
from collections import Counter

import numpy as np
import pytest

from susy_pipeline import data, shards
from susy_pipeline.data import DataError
from susy_pipeline.commands.scale import scale

SAMPLE = "data/susy-sample.csv.gz"
FORMATS = ("csv", "csv.gz", "parquet")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """{(format, layout): [paths]}: layout 'files' = 3 files of 10k rows, 'single' = one file of 20k."""
    root = tmp_path_factory.mktemp("shards")
    many = scale(SAMPLE, str(root / "many"), times=3, files=3, row_group_rows=2_500)["files"]
    one = scale(SAMPLE, str(root / "one"), times=2, files=1, row_group_rows=3_000)["files"]
    out = {}
    for layout, files in (("files", many), ("single", one)):
        out[("csv.gz", layout)] = files["csv.gz"]
        out[("parquet", layout)] = files["parquet"]
        plain = []
        for path in files["csv.gz"]:
            target = path[:-len(".gz")]
            with gzip.open(path, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            plain.append(target)
        out[("csv", layout)] = plain
    return out


def _whole(paths):
    """{(path, row): features} from plain whole-file reads."""
    rows = {}
    for path in paths:
        for batch in data.iter_batches(path):
            for k in range(len(batch)):
                rows[(path, batch.first_row + k)] = batch.features[k]
    return rows


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["files", "single"])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_union_of_shards_is_every_row_exactly_once(inputs, fmt, layout, n):
    paths = inputs[(fmt, layout)]
    expected = _whole(paths)
    seen: Counter = Counter()
    got = {}
    for i, pieces in enumerate(shards.plan(paths, n, stripe_rows=1_000)):
        assert pieces == shards.plan_shard(paths, i, n, stripe_rows=1_000)
        for piece in pieces:
            for batch in shards.iter_piece(piece, block_bytes=1 << 16):
                for k in range(len(batch)):
                    key = (piece.path, batch.first_row + k)
                    seen[key] += 1
                    got[key] = batch.features[k]
    assert set(seen) == set(expected)
    assert max(seen.values()) == 1
    assert all(np.array_equal(got[key], expected[key]) for key in expected)


def test_the_rule(inputs):
    many, single = inputs[("parquet", "files")], inputs[("parquet", "single")]
    # At least N files: whole files, round-robin.
    assert [[p.path for p in s] for s in shards.plan(many, 2)] == [[many[0], many[2]], [many[1]]]
    assert all(p.kind == "file" for s in shards.plan(many, 3) for p in s)
    # One Parquet file of 7 row groups in 3 parts: by row groups.
    assert [(p.kind, p.start, p.stop) for s in shards.plan(single, 3) for p in s] == [
        ("row_groups", 0, 3), ("row_groups", 3, 5), ("row_groups", 5, 7)]
    # CSV by byte ranges, CSV.gz by stripes.
    csv = inputs[("csv", "single")]
    assert [p.kind for s in shards.plan(csv, 2) for p in s] == ["byte_range"] * 2
    gz = inputs[("csv.gz", "single")]
    assert [(p.kind, p.part, p.parts) for s in shards.plan(gz, 2) for p in s] == [
        ("row_stripes", 0, 2), ("row_stripes", 1, 2)]
    # Fewer files than shards: shard s works on file s % F.
    plan = shards.plan(many, 7)
    assert [s[0].path for s in plan] == [many[i % 3] for i in range(7)]
    assert shards.plan_id(many, 3) != shards.plan_id(many, 2) != shards.plan_id(many[:2], 2)


def test_globs_resolve_sorted_and_once(inputs, tmp_path):
    paths = inputs[("parquet", "files")]
    folder = paths[0].rsplit("/", 1)[0]
    assert shards.resolve_inputs([f"{folder}/*.parquet", paths[1]]) == sorted(paths)
    with pytest.raises(DataError, match="no such file"):
        shards.resolve_inputs([str(tmp_path / "nothing-*.csv")])


def _write(path, lines, newline_at_end=True):
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    path.write_text(text)
    return str(path)


def _sample_lines(n):
    with gzip.open(SAMPLE, "rt") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


@pytest.mark.parametrize("parts", [2, 5, 13])
@pytest.mark.parametrize("newline_at_end", [True, False])
def test_byte_ranges_cut_anywhere_and_lose_no_line(tmp_path, parts, newline_at_end):
    lines = _sample_lines(40)
    path = _write(tmp_path / "x.csv", lines, newline_at_end)
    rows = []
    for piece in shards._split_file(path, parts, shards.STRIPE_ROWS):
        for batch in shards.iter_piece(piece):
            rows.extend(range(batch.first_row, batch.first_row + len(batch)))
    assert rows == list(range(40))


def test_bad_line_in_the_middle_of_a_byte_range_names_file_and_line(tmp_path):
    lines = _sample_lines(3_000)
    lines[2_345] = lines[2_345].rsplit(",", 1)[0]  # 18 columns
    path = _write(tmp_path / "bad.csv", lines)
    pieces = shards._split_file(path, 2, shards.STRIPE_ROWS)
    assert list(shards.iter_piece(pieces[0]))  # the first half is fine
    with pytest.raises(DataError, match=r"bad\.csv, line 2346: expected 19 columns, found 18"):
        list(shards.iter_piece(pieces[1], block_bytes=1 << 16))


def test_non_finite_value_in_a_byte_range_names_the_absolute_line(tmp_path):
    lines = _sample_lines(3_000)
    fields = lines[2_500].split(",")
    fields[4] = "nan"
    lines[2_500] = ",".join(fields)
    path = _write(tmp_path / "nan.csv", lines)
    pieces = shards._split_file(path, 2, shards.STRIPE_ROWS)
    with pytest.raises(DataError, match=r"nan\.csv, line 2501: column 5 .* not a finite number"):
        list(shards.iter_piece(pieces[1], block_bytes=1 << 16))


def test_bad_line_in_a_striped_gz_fails_every_shard_that_reads_the_file(tmp_path):
    lines = _sample_lines(5_000)
    lines[4_321] = lines[4_321].replace(",", ",x", 1)
    path = str(tmp_path / "bad.csv.gz")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    for piece in shards._split_file(path, 3, 1_000):
        with pytest.raises(DataError, match=r"bad\.csv\.gz, line 4322: column 2 .* not a number"):
            list(shards.iter_piece(piece))


def test_blank_line_in_a_byte_range_is_named(tmp_path):
    lines = _sample_lines(2_000)
    lines[1_500] = ""
    path = _write(tmp_path / "blank.csv", lines)
    pieces = shards._split_file(path, 2, shards.STRIPE_ROWS)
    with pytest.raises(DataError, match=r"blank\.csv, line 1501: expected 19 columns, found 1"):
        list(shards.iter_piece(pieces[1]))


@pytest.mark.parametrize("name", ["empty.csv", "empty.csv.gz"])
def test_an_empty_file_split_among_shards_is_an_error_not_zero_rows(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb"):
            pass
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        for pieces in shards.plan([str(path)], 3):
            for piece in pieces:
                list(shards.iter_piece(piece))

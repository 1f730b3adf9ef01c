"""Datasets in object storage: `s3://` against moto's S3 server, a real S3-protocol endpoint on loopback.

The pipeline finds moto through the standard AWS variables (`AWS_ENDPOINT_URL`, credentials,
`AWS_REGION`), as a pod would. Objects are uploaded with pyarrow.fs itself. Bucket `data`:

- `files/`: the sample's 10,000 UCI test rows x3 as 3 files per format (10,000 rows each;
  Parquet in 2,500-row groups), so 3 shards read whole files;
- `single/`: the same 30,000 rows as one file per format (Parquet in 1,000-row groups), so
  3 shards split it: Parquet by row groups (ranged reads), CSV.gz by stripes, CSV by byte ranges;
- `sample.csv.gz`: the sample itself, for `produce`.

Shard totals over `s3://` must equal the local single-process totals exactly, and each shard
must fetch about its share of the bytes.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from support.moto import CREDENTIALS, MotoServer, moto_missing
from susy_pipeline import data, files
from susy_pipeline.errors import DataError

pytestmark = pytest.mark.integration

SAMPLE = "data/susy-sample.csv.gz"
CHUNK = 4_096
STRIPES = 1_000
BUCKET = "data"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    if reason := moto_missing():
        pytest.skip(reason)
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto, monkeypatch):
    """The process environment a pod with the data Secret would have; fresh filesystems."""
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    files._filesystem.cache_clear()
    yield moto.env()
    files._filesystem.cache_clear()


def _s3(moto) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                             endpoint_override=moto.url)


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):
    """A small trained model in a SQLite store, and the same inputs on disk and in the bucket."""
    pytest.importorskip("tensorflow")
    from susy_pipeline.commands.scale import scale
    from support.models import small_model_in_store

    root = tmp_path_factory.mktemp("object-storage")
    store = f"sqlite:///{root}/store.sqlite3"
    model_id, model = small_model_in_store(store, "test-s3")

    local = root / "local"
    scale(SAMPLE, str(local / "files"), times=3, files=3, row_group_rows=2_500)
    scale(SAMPLE, str(local / "single"), times=3, files=1, row_group_rows=1_000)
    for path in local.glob("*/*.csv.gz"):
        with gzip.open(path, "rb") as src, open(str(path)[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.copy(SAMPLE, local / "sample.csv.gz")
    pafs.copy_files(str(local), BUCKET, destination_filesystem=_s3(moto))
    return {"root": root, "local": local, "store": store, "model_id": model_id}


def _inputs(world, fmt, layout, where):
    pattern = f"{layout}/*.{fmt}"
    if where == "local":
        return [str(world["local"] / pattern)]
    return [f"s3://{BUCKET}/{pattern}"]


def _run(world, evaluation, inputs, n):
    from susy_pipeline.scoring import evaluate_shard
    from susy_pipeline.evaluation import aggregate
    from susy_pipeline.store import open_store

    with open_store(world["store"]) as store:
        for i in range(n):
            evaluate_shard(store, model_ref=world["model_id"], inputs=inputs, evaluation=evaluation,
                           shard_index=i, shard_count=n, chunk_rows=CHUNK, stripe_rows=STRIPES,
                           progress_seconds=60, warmup_calls=1)
        results = sorted(store.shard_results(evaluation), key=lambda r: r["shard_index"])
        return aggregate(results, n), results


def _exact(result):
    return {k: result[k] for k in ("rows", "correct", "accuracy", "log_loss", "log_loss_units", "confusion",
                                   "histogram", "auc")}


def _sizes(world, fmt, layout):
    return sorted(os.path.getsize(p) for p in (world["local"] / layout).glob(f"*.{fmt}"))


@pytest.mark.parametrize("fmt", ["parquet", "csv.gz", "csv"])
@pytest.mark.parametrize("layout", ["files", "single"])
def test_three_shards_over_s3_equal_the_local_run_exactly(world, s3_env, fmt, layout):
    local, local_shards = _run(world, f"local-{fmt}-{layout}", _inputs(world, fmt, layout, "local"), 1)
    remote, shards = _run(world, f"s3-{fmt}-{layout}", _inputs(world, fmt, layout, "s3"), 3)
    assert local["rows"] == 30_000
    assert _exact(remote) == _exact(local)
    assert local_shards[0]["remote_bytes_read"] == 0

    fetched = [s["remote_bytes_read"] for s in shards]
    sizes = _sizes(world, fmt, layout)
    total = sum(sizes)
    print(f"\n{fmt} {layout}: object bytes {total:,}; bytes fetched per shard {fetched} "
          f"({', '.join(f'{f / total:.3f}' for f in fetched)} of the total); "
          f"ranged reads {[s['remote_reads'] for s in shards]}")
    if fmt == "parquet":
        # One GET per footer and one per row group: a prefetched row group is never fetched twice.
        groups = {f"s3://{BUCKET}/{layout}/{p.name}": pq.ParquetFile(p).num_row_groups
                  for p in (world["local"] / layout).glob("*.parquet")}
        for shard in shards:
            read = [groups[i["path"]] if i["kind"] == "file" else i["stop"] - i["start"]
                    for i in shard["inputs"]]
            assert shard["remote_reads"] == len(read) + sum(read), shard["inputs"]
    if layout == "files" or fmt == "parquet":
        # Each shard reads only its own files or row groups: about a third each, and the
        # shards together fetch each byte about once (Parquet footers are read by every shard).
        for f in fetched:
            assert abs(f - total / 3) <= 0.1 * total, fetched
        assert total * 0.99 <= sum(fetched) <= total * 1.1
    elif fmt == "csv.gz":
        # gzip has no random access: every shard of a split .gz reads all of it (docs/evaluation.md).
        assert fetched == [total] * 3
    else:
        # Plain CSV byte ranges: a shard reads its range, plus the bytes before it to count lines.
        assert fetched[0] < fetched[1] < fetched[2] <= total * 1.02


def test_a_remote_row_group_over_the_prefetch_bound_is_streamed_with_the_same_rows(world, s3_env, monkeypatch):
    """A row group larger than data.REMOTE_PREFETCH_MAX_BYTES is not pre-buffered whole (an old
    tool's one huge row group): the file is read page by page, and the rows are the same."""
    from susy_pipeline import data

    uri = f"s3://{BUCKET}/single/" + sorted(p.name for p in (world["local"] / "single").glob("*.parquet"))[0]
    expected = list(data.iter_batches(world["local"] / "single" / uri.rsplit("/", 1)[1]))
    monkeypatch.setattr(data, "REMOTE_PREFETCH_MAX_BYTES", 0)
    data.forget_remote_metadata()
    assert not hasattr(data.open_parquet(uri), "prefetch_row_group")
    streamed = list(data.iter_batches(uri))
    assert np.array_equal(np.concatenate([b.features for b in streamed]),
                          np.concatenate([b.features for b in expected]))


def test_a_shards_progress_estimate_fetches_one_head_that_its_reader_does_not_fetch_again(world, s3_env):
    """Planning a shard's rows for progress samples the head of one CSV of each format, not of
    every file, and the reader streaming that file takes the head from memory: with the plan, the
    shard fetches each byte of the file once."""
    from susy_pipeline import shards

    uris = files.resolve([f"s3://{BUCKET}/files/*.csv"])
    assert len(uris) == 3
    before = files.remote_read_totals()
    rows, exact = shards.planned_shard_rows(shards.plan_shard(uris, 0, 1))
    planned = files.remote_read_totals()
    assert planned["bytes"] - before["bytes"] == shards.ESTIMATE_SAMPLE_BYTES
    assert not exact and abs(rows - 30_000) / 30_000 < 0.02, rows
    assert sum(len(b) for b in data.iter_batches(uris[0])) == 10_000
    streamed = files.remote_read_totals()
    assert streamed["bytes"] - before["bytes"] == files.size(uris[0])


def test_globs_list_sorted_and_each_object_once(world, s3_env):
    listed = files.resolve([f"s3://{BUCKET}/files/*.parquet",
                            f"s3://{BUCKET}/files/susy-test-x3-00001-of-00003.parquet"])
    assert listed == sorted(listed) and len(listed) == 3
    assert all(u.startswith(f"s3://{BUCKET}/files/susy-test-x3-") for u in listed)
    assert files.resolve([f"s3://{BUCKET}/*/*-00000-of-00001.csv.gz"]) == [
        f"s3://{BUCKET}/single/susy-test-x3-00000-of-00001.csv.gz"]


def test_anonymous_http_url_reads_a_public_s3_protocol_object(world, s3_env):
    # moto answers unsigned requests, as a public bucket does: https:// is the same code over TLS.
    uri = f"{s3_env['AWS_ENDPOINT_URL']}/{BUCKET}/single/susy-test-x3-00000-of-00001.parquet"
    local = world["local"] / "single" / "susy-test-x3-00000-of-00001.parquet"
    got = np.concatenate([b.features for b in data.iter_batches(uri)])
    want = np.concatenate([b.features for b in data.iter_batches(str(local))])
    np.testing.assert_array_equal(got, want)


def test_https_url_reads_a_public_object_over_tls_with_aws_ca_bundle(world, tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("openssl (to make the test certificate) is not installed")
    server = MotoServer(tmp_path, tls=True)
    try:
        server.create_bucket("public")
        s3 = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                               endpoint_override=server.url, tls_ca_file_path=str(server.ca))
        pafs.copy_files(str(world["local"] / "single"), "public/single", destination_filesystem=s3)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(server.ca))
        files._filesystem.cache_clear()
        [uri] = files.resolve([f"{server.url}/public/single/*.parquet"])
        assert uri == f"{server.url}/public/single/susy-test-x3-00000-of-00001.parquet"
        got = np.concatenate([b.features for b in data.iter_batches(uri)])
    finally:
        files._filesystem.cache_clear()
        server.stop()
    local = world["local"] / "single" / "susy-test-x3-00000-of-00001.parquet"
    np.testing.assert_array_equal(got, np.concatenate([b.features for b in data.iter_batches(str(local))]))


def _cli(args, env, timeout=120):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "susy_pipeline", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def test_scale_out_to_s3_writes_the_same_rows(world, moto, s3_env, tmp_path):
    from susy_pipeline.commands.scale import scale

    proc, _ = _cli(["scale", "--times", "2", "--files", "2", "--row-group-rows", "3000",
                    "--out", f"s3://{BUCKET}/scaled/x2"], s3_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    local = scale(SAMPLE, str(tmp_path), times=2, files=2, row_group_rows=3_000)
    for fmt in ("csv.gz", "parquet"):
        names = [Path(p).name for p in local["files"][fmt]]
        assert written["files"][fmt] == [f"s3://{BUCKET}/scaled/x2/{name}" for name in names]
        for uri, path in zip(written["files"][fmt], local["files"][fmt]):
            a = [b.features for b in data.iter_batches(uri)]
            b = [b.features for b in data.iter_batches(path)]
            np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    names = [i.path for i in _s3(moto).get_file_info(pafs.FileSelector(f"{BUCKET}/scaled/x2"))]
    assert len(names) == 4 and not any(n.endswith(".partial") for n in names)


@pytest.mark.parametrize("per_message", [1, 50])
def test_produce_from_s3_sends_the_same_rows_as_from_disk(world, s3_env, kafka_broker, per_message):
    from susy_pipeline import kafka_io
    from susy_pipeline.store import open_store

    run = f"s3-produce-{per_message}"
    proc, _ = _cli(["produce", "--data", f"s3://{BUCKET}/sample.csv.gz", "--skip", "100", "--limit", "700",
                    "--rows-per-message", str(per_message), "--partitions", "2",
                    "--bootstrap", kafka_broker, "--topic", run, "--run-name", run,
                    "--store", world["store"]], s3_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open_store(world["store"]) as store:
        record = store.get_production(run)
    assert record["rows"] == 700 and record["source"]["data"] == f"s3://{BUCKET}/sample.csv.gz"
    raw = list(kafka_io.kafka_python_batches(kafka_broker, run, kafka_io.Production.ranges(record),
                                             timeout_s=30))
    got = sorted(line for _, values in raw for value in values for line in value.decode().split("\n"))
    with gzip.open(SAMPLE, "rt") as f:
        lines = [line.rstrip("\n").split(",", 1)[1] for line in list(f)[100:800]]
    assert got == sorted(lines)


# --- bad input ---------------------------------------------------------------------------

BAD = [
    pytest.param(["--data", "ftp://host/susy.parquet"], "ftp://host/susy.parquet: unknown scheme 'ftp://'",
                 id="unknown-scheme"),
    pytest.param(["--data", "s3://no-such-bucket/susy.parquet"],
                 "s3://no-such-bucket/susy.parquet: bucket 'no-such-bucket' does not exist", id="no-bucket"),
    pytest.param(["--data", "s3://no-such-bucket/x/*.parquet"],
                 "s3://no-such-bucket/x/*.parquet: bucket 'no-such-bucket' does not exist",
                 id="no-bucket-glob"),
    pytest.param(["--data", f"s3://{BUCKET}/files/nothing.parquet"],
                 f"s3://{BUCKET}/files/nothing.parquet: no such object", id="no-object"),
    pytest.param(["--data", f"s3://{BUCKET}/files/*.feather"],
                 f"s3://{BUCKET}/files/*.feather: the glob matches no object", id="glob-matches-nothing"),
]


def _evaluate(world, *extra):
    return ["evaluate", "--model", world["model_id"], "--store", world["store"], "--evaluation", "bad",
            "--shard-index", "0", "--shard-count", "1", *extra]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_uri_exits_2_naming_it(world, s3_env, args, message):
    proc, _ = _cli(_evaluate(world, *args), s3_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {message}" in proc.stderr


def test_scale_out_to_a_missing_bucket_exits_2(s3_env):
    proc, _ = _cli(["scale", "--times", "1", "--files", "1", "--out", "s3://no-such-bucket/x"], s3_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist" in proc.stderr


def test_scale_out_to_https_is_refused(s3_env):
    proc, _ = _cli(["scale", "--times", "1", "--files", "1", "--out", "https://example.org/b/x"], s3_env)
    assert proc.returncode == 2 and "https:// is read only" in proc.stderr


def test_produce_from_a_missing_object_exits_2(world, s3_env, kafka_broker):
    proc, _ = _cli(["produce", "--data", f"s3://{BUCKET}/nothing.csv.gz", "--bootstrap", kafka_broker,
                    "--topic", "never", "--run-name", "never", "--store", world["store"]], s3_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: s3://{BUCKET}/nothing.csv.gz: no such object" in proc.stderr


def test_wrong_credentials_name_the_uri_and_the_secret(world, s3_env, tmp_path):
    checking = MotoServer(tmp_path, check_credentials=True)
    try:
        env = {**checking.env(), "SUSY_DATA_SECRET": "susy-data-s3"}
        uri = f"s3://{BUCKET}/files/*.parquet"
        proc, _ = _cli(_evaluate(world, "--data", uri), env)
    finally:
        checking.stop()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {uri}: access denied while listing it: check the credentials in Secret 'susy-data-s3'" \
        in proc.stderr
    assert "INVALID_ACCESS_KEY_ID" in proc.stderr


def test_endpoint_refusing_connections_exits_3_after_bounded_retries(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    proc, seconds = _cli(_evaluate(world, "--data", f"s3://{BUCKET}/files/x.parquet"), env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"error: s3://{BUCKET}/files/x.parquet: object storage unreachable while looking it up, " \
           f"after {files.ATTEMPTS} attempts" in proc.stderr
    assert seconds < 30


def test_endpoint_that_never_answers_exits_3_within_attempts_times_timeout(world):
    with socket.socket() as s:  # accepts connections (the kernel's backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s.getsockname()[1]}",
               "SUSY_STORAGE_TIMEOUT_S": "1", "SUSY_STORAGE_ATTEMPTS": "2"}
        proc, seconds = _cli(_evaluate(world, "--data", f"s3://{BUCKET}/files/*.parquet"), env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "object storage unreachable while listing it, after 2 attempts" in proc.stderr
    assert "Timeout was reached" in proc.stderr
    assert seconds < 2 * 1 + 10  # two attempts of 1 s, back-off and start-up


# --- names, without a server ------------------------------------------------------------

def test_uri_forms():
    assert files.join("s3://b/prefix/", "f.parquet") == "s3://b/prefix/f.parquet"
    assert files._split("https://storage.example.org/bucket/a/b.parquet") == (
        "https", "https://storage.example.org", "bucket/a/b.parquet")
    assert files._split("gs://bucket/a.csv.gz") == ("gs", "gs", "bucket/a.csv.gz")
    with pytest.raises(DataError, match="expected https://HOST/BUCKET/KEY"):
        files.resolve(["https://example.org/onlyone"])
    with pytest.raises(DataError, match="unknown scheme 'hdfs://'"):
        files.resolve(["hdfs://nn/x.parquet"])
    assert isinstance(files._filesystem("gs"), pafs.GcsFileSystem)

"""Aggregation in bounded memory (issue 22, point 2): at the CRD's maximum, 1000 shards of 8 models
and their ensemble, the operator merges the stored shard results one at a time with only the
fields it needs, so its peak stays under the chart's memory limit; the total equals merging the
whole list at once.

The synthetic results are what the evaluator stand-in of support/fakes.py writes: the evaluator's
own tallies of pseudo-scores (10 histograms of 16,384 bins per result, as a real 8-model result
has), written with `put_shard_result`. The aggregation runs in a fresh subprocess, which reports
its peak resident set (VmHWM of /proc/self/status: getrusage's ru_maxrss is carried across exec
on Linux, so a child of a pytest process that loaded TensorFlow reported the parent's 665 MiB).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from susy_pipeline import evaluation
from susy_pipeline.store import SHARD_RESULTS_PAGE, MongoStore, open_store
from support import fakes
from support.mongo import mongomock_client

ROOT = Path(__file__).resolve().parents[1]
MODELS = [f"{i:032x}" for i in range(1, evaluation.MAX_MODELS + 1)]


def _crd_max_shards() -> int:
    crd = yaml.safe_load((ROOT / "manifests" / "crds" / "evaluationruns.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return int(spec["properties"]["shards"]["maximum"])


def _chart_memory_limit_bytes() -> int:
    limit = yaml.safe_load((ROOT / "charts" / "susy-operator" / "values.yaml").read_text())[
        "resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2]) * 1024 * 1024


def _write_results(store, name: str, shards: int) -> None:
    refs = [f"model-{i}" for i in range(len(MODELS))]
    for index in random.Random(7).sample(range(shards), shards):  # stored in no particular order
        store.put_shard_result(name, index, fakes.models_shard_result(name, refs, MODELS, index, shards, "mean"))


# Run in a fresh interpreter: its peak RSS is the aggregation's (and the imports').
_AGGREGATE = textwrap.dedent("""
    import json, sys
    from susy_pipeline import evaluation
    from susy_pipeline.store import open_store

    def peak_rss_bytes():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    uri, name, shards, whole, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "whole", sys.argv[5]
    with open_store(uri) as store:
        before = peak_rss_bytes()
        if whole:  # every result decoded at once, as the operator did before
            result = evaluation.aggregate(store.shard_results(name), shards)
        else:
            result = evaluation.aggregate_stored(store, name, shards)
    peak = peak_rss_bytes()
    with open(out, "w") as f:
        json.dump(result, f, sort_keys=True)
    print(json.dumps({"peak_rss_bytes": peak, "before_bytes": before}))
""")


def _aggregate_in_a_subprocess(uri: str, name: str, shards: int, whole: bool, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _AGGREGATE, uri, name, str(shards),
                           "whole" if whole else "stream", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_1000_shards_of_8_models_aggregate_within_the_operators_memory_limit(tmp_path, capsys):
    shards, limit = _crd_max_shards(), _chart_memory_limit_bytes()
    assert shards == 1000 and limit == 512 * 1024 * 1024
    uri = f"sqlite:///{tmp_path}/store.sqlite3"
    with open_store(uri) as store:
        _write_results(store, "max", shards)
        assert store.count_shard_results("max") == shards

    streamed = _aggregate_in_a_subprocess(uri, "max", shards, whole=False, out=tmp_path / "streamed.json")
    whole = _aggregate_in_a_subprocess(uri, "max", shards, whole=True, out=tmp_path / "whole.json")
    # The same result, every field of it (histograms and per-shard lines included).
    assert (tmp_path / "streamed.json").read_text() == (tmp_path / "whole.json").read_text()
    result = json.loads((tmp_path / "streamed.json").read_text())
    assert result["rows"] == shards * fakes.ROWS_PER_SHARD and len(result["models"]) == len(MODELS) + 1
    assert len(result["shards"]) == shards
    with capsys.disabled():
        print(f"\n{shards} shards x {len(MODELS)} models + ensemble: peak RSS streamed "
              f"{streamed['peak_rss_bytes'] / 2**20:.0f} MiB (after imports "
              f"{streamed['before_bytes'] / 2**20:.0f} MiB), whole list {whole['peak_rss_bytes'] / 2**20:.0f} MiB; "
              f"limit {limit / 2**20:.0f} MiB")
    assert streamed["peak_rss_bytes"] < limit
    assert whole["peak_rss_bytes"] > limit  # what the operator was killed for


@pytest.fixture(params=["embedded", "mongo"])
def store(request, tmp_path):
    s = (open_store(f"sqlite:///{tmp_path}/store.sqlite3") if request.param == "embedded"
         else MongoStore(client=mongomock_client(), database="bigdata"))
    yield s
    s.close()


def test_the_streamed_aggregate_equals_the_whole_list_in_both_stores(store):
    shards = 5 * SHARD_RESULTS_PAGE + 3  # several pages and a partial one
    _write_results(store, "ev", shards)
    store.put_shard_result("other", 0, fakes.shard_result("other", MODELS[0], 0, 1))  # not read
    whole = evaluation.aggregate(store.shard_results("ev"), shards)
    assert evaluation.aggregate_stored(store, "ev", shards) == whole
    assert evaluation.aggregate(random.Random(1).sample(store.shard_results("ev"), shards), shards) == whole
    read = list(store.iter_shard_results("ev", ("rows",)))
    assert sorted(r["shard_index"] for r in read) == list(range(shards))
    assert all(set(r) == {"shard_index", "rows"} for r in read)  # only the fields asked for
    assert store.count_shard_results("ev") == shards and store.count_shard_results("nothing") == 0


def test_a_streamed_aggregate_refuses_what_the_whole_list_refused(store):
    _write_results(store, "gap", 4)
    store.put_shard_result("gap", 7, fakes.models_shard_result("gap", [f"model-{i}" for i in range(len(MODELS))],
                                                                 MODELS, 7, 4, "mean"))
    with pytest.raises(evaluation.IncompleteEvaluation) as streamed:
        evaluation.aggregate_stored(store, "gap", 5)
    with pytest.raises(evaluation.IncompleteEvaluation) as whole:
        evaluation.aggregate(store.shard_results("gap"), 5)
    assert str(streamed.value) == str(whole.value)
    assert streamed.value.missing == [4] and streamed.value.unexpected == [7]

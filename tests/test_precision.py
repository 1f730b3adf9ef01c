"""bf16 where the CPU has it (susy_pipeline/precision.py): the decision from /proc/cpuinfo's flags
and the run's opt-in (pure), and the bf16 path for real on this CPU: TensorFlow computes bfloat16
on any x86 CPU (oneDNN, or emulated where the CPU lacks AMX and AVX512-BF16, only slower), so the
scores, the recorded precision, the refusal to aggregate mixed precisions and mixed-bf16 training
all run here whatever the flags say.

Data: the real sample (data/susy-sample.csv.gz); rows 0-10978 train, 10979- are its test rows.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLE
from susy_pipeline import precision
from susy_pipeline.errors import EXIT_BAD_INPUT, BadInput, exit_code
from susy_pipeline.evaluation import IncompleteEvaluation, aggregate
from susy_pipeline.schema import SAMPLE_TRAIN_ROWS

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx2 avx512f {extra}
bogomips\t: 4000.00
"""


@pytest.mark.parametrize("extra, native", [
    ("amx_bf16 amx_tile amx_int8", True),    # Sapphire Rapids: AMX
    ("avx512_bf16", True),                   # Cooper Lake, Zen 4: AVX512-BF16
    ("amx_tile", False),                     # tiles without their bf16 instructions
    ("avx512_vnni", False),
    ("", False),
])
def test_the_cpu_flags_that_mean_native_bf16(extra, native) -> None:
    flags = precision.cpu_flags(CPUINFO.format(extra=extra))
    assert "avx2" in flags and precision.has_native_bf16(flags) is native


def test_no_cpuinfo_means_no_flags() -> None:
    assert precision.cpu_flags("") == frozenset()


@pytest.mark.parametrize("requested, allow, flags, expected", [
    ("fp32", True, {"avx512_bf16"}, "fp32"),
    ("bf16", False, set(), "bf16"),                  # an explicit choice, even emulated
    ("auto", False, {"amx_bf16", "amx_tile"}, "fp32"),  # no opt-in: tallies must not change
    ("auto", True, set(), "fp32"),                   # opted in, but no instructions
    ("auto", True, {"amx_tile"}, "fp32"),
    ("auto", True, {"amx_bf16", "amx_tile"}, "bf16"),
    ("auto", True, {"avx512_bf16"}, "bf16"),
])
def test_auto_takes_bf16_only_with_the_opt_in_and_the_instructions(requested, allow, flags, expected) -> None:
    decision = precision.decide(requested, allow_bf16=allow, flags=flags)
    assert decision.precision == expected and decision.requested == requested and decision.reason


def test_an_unknown_precision_is_bad_input() -> None:
    with pytest.raises(BadInput, match="precision 'fp16': expected one of auto, fp32, bf16"):
        precision.decide("fp16", allow_bf16=True, flags=set())


@pytest.fixture(scope="module")
def tuned_model():
    from susy_pipeline.model import RECIPES, build_model

    rng = np.random.default_rng(0)
    return build_model(RECIPES["tuned"].model, mean=rng.normal(size=18), variance=rng.uniform(0.5, 2, 18))


def test_bf16_computes_the_hidden_layers_in_bfloat16_and_keeps_the_ends_fp32(tuned_model) -> None:
    from susy_pipeline.scoring import make_scorer

    bf16 = precision.with_precision(tuned_model, "bf16")
    policies = {layer.name: layer.dtype_policy.name for layer in bf16.layers}
    assert policies["standardize"] == policies["signal_probability"] == "float32"
    assert {policies[f"dense_{i}"] for i in range(3)} == {"mixed_bfloat16"}
    assert precision.with_precision(tuned_model, "fp32") is tuned_model  # nothing to change
    assert precision.model_precision(precision.with_precision(bf16, "fp32")) == "fp32"

    x = np.random.default_rng(1).normal(size=(4096, 18)).astype(np.float32)
    p32, p16 = make_scorer(tuned_model, 4096)(x), make_scorer(bf16, 4096)(x)
    assert p16.dtype == np.float32
    difference = np.abs(p32 - p16)
    assert 0 < difference.mean() < 5e-3 and difference.max() < 0.05  # close, and really another precision


@pytest.fixture(scope="module")
def store_with_model(tmp_path_factory):
    from support.models import small_model_in_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('precision')}/store.sqlite3"
    model_id, _ = small_model_in_store(uri, "precision")
    return uri, model_id


def _shard(uri, model_id, evaluation, index, count, **kw):
    from susy_pipeline.scoring import evaluate_shard
    from susy_pipeline.store import open_store

    with open_store(uri) as store:
        return evaluate_shard(store, model_ref=model_id, inputs=[str(SAMPLE)], evaluation=evaluation,
                              shard_index=index, shard_count=count, skip=SAMPLE_TRAIN_ROWS, chunk_rows=2048,
                              progress_seconds=60, warmup_calls=1, **kw)


def test_every_shard_result_records_its_precision(store_with_model) -> None:
    uri, model_id = store_with_model
    plain = _shard(uri, model_id, "p-default", 0, 1)
    assert (plain["precision"], plain["precision_requested"]) == ("fp32", "auto")
    assert "did not opt in" in plain["precision_reason"]
    # The same run opted in on a CPU that (we say) has AMX: bf16, and the scores move.
    opted = _shard(uri, model_id, "p-auto", 0, 1, allow_bf16=True, cpu_flags=frozenset({"amx_bf16", "amx_tile"}))
    assert (opted["precision"], opted["precision_requested"]) == ("bf16", "auto")
    assert opted["rows"] == plain["rows"] == 10_000
    assert opted["histogram"] != plain["histogram"] or opted["log_loss_units"] != plain["log_loss_units"]
    assert abs(opted["correct"] - plain["correct"]) < 50  # a few labels flip at 0.5, not many
    # Opted in on a CPU without the instructions: fp32, tallies exactly the default's.
    without = _shard(uri, model_id, "p-no-amx", 0, 1, allow_bf16=True, cpu_flags=frozenset())
    assert without["precision"] == "fp32"
    assert (without["histogram"], without["log_loss_units"]) == (plain["histogram"], plain["log_loss_units"])


def test_aggregation_refuses_shards_of_different_precisions(store_with_model, tmp_path) -> None:
    from susy_pipeline.store import open_store

    uri, model_id = store_with_model
    _shard(uri, model_id, "mixed", 0, 2, precision="fp32")
    _shard(uri, model_id, "mixed", 1, 2, precision="bf16")
    with open_store(uri) as store:
        results = store.shard_results("mixed")
    with pytest.raises(IncompleteEvaluation, match=r"shards were scored in different precisions "
                                                   r"\(bf16 in shard\(s\) 1; fp32 in shard\(s\) 0\)") as caught:
        aggregate(results, 2)
    assert exit_code(caught.value) == EXIT_BAD_INPUT
    # The command says the same and exits 2.
    done = subprocess.run([sys.executable, "-m", "susy_pipeline", "aggregate", "--evaluation", "mixed",
                           "--shard-count", "2", "--store", uri], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "different precisions" in done.stderr, done.stderr[-2000:]
    # Both shards in bf16 add up, and the aggregate says which precision.
    _shard(uri, model_id, "all-bf16", 0, 2, precision="bf16")
    _shard(uri, model_id, "all-bf16", 1, 2, precision="bf16")
    with open_store(uri) as store:
        assert aggregate(store.shard_results("all-bf16"), 2)["precision"] == "bf16"


def test_roc_auc_is_exact() -> None:
    from sklearn.metrics import roc_auc_score

    from susy_pipeline.training import roc_auc

    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.46
    scores = np.round(rng.random(5000) + 0.3 * labels, 2)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.ones(3), np.arange(3)) is None


def test_mixed_bf16_training_reports_its_holdout_auc_beside_fp32(tmp_path) -> None:
    """The tuned recipe, 3 epochs on the sample's training rows, in fp32 and in mixed bf16: both
    record the AUC on the held-out rows (every 5th), and mixed bf16's also for its own weights
    computed in fp32; the model keeps its precision through the store's bytes."""
    from test_training import in_memory_source

    from susy_pipeline.model import RECIPES, model_from_bytes, model_to_bytes, with_overrides
    from susy_pipeline.training import train

    config = with_overrides(RECIPES["tuned"], epochs=3, patience=0)
    source = in_memory_source(SAMPLE, SAMPLE_TRAIN_ROWS)
    _, fp32 = train(source, config, expected_rows=SAMPLE_TRAIN_ROWS, precision="fp32")
    model, bf16 = train(source, config, expected_rows=SAMPLE_TRAIN_ROWS, precision="mixed_bf16")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "mixed_bf16")
    assert fp32["holdout_rows"] == bf16["holdout_rows"] == SAMPLE_TRAIN_ROWS // 5
    assert "holdout_auc_fp32" not in fp32
    assert 0.8 < fp32["holdout_auc"] < 1 and 0.8 < bf16["holdout_auc"] < 1
    assert abs(bf16["holdout_auc"] - fp32["holdout_auc"]) < 0.02
    assert abs(bf16["holdout_auc"] - bf16["holdout_auc_fp32"]) < 0.005
    assert precision.model_precision(model_from_bytes(model_to_bytes(model))) == "mixed_bf16"

"""Which float precision a model computes in: the decision (pure, from /proc/cpuinfo's flags and
the run's settings) and the model in that precision.

bf16 (bfloat16: float32's 8 exponent bits, 7 of its 23 mantissa bits) runs the hidden layers'
matrix products through oneDNN's bf16 kernels, about 1.7x faster than fp32 on a CPU with AMX or
AVX512-BF16 (issue 24: 1.01M against 1.76M rows/s on one core); on any other CPU TensorFlow
still computes it, emulated, and slower. Scores move a little (mean |p32 - p16| about 3e-4), so
tallies change: `auto` takes bf16 only where the CPU has the instructions and the run opted in.

The input standardization (Normalization) and the output layer stay fp32 in every precision, as
Keras's mixed-precision guide advises for the parts that set the result's resolution
(https://www.tensorflow.org/guide/mixed_precision, "the last layer of the model ... float32").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

EVALUATION_PRECISIONS = ("auto", "fp32", "bf16")
TRAINING_PRECISIONS = ("fp32", "mixed_bf16")
# /proc/cpuinfo flags (the kernel's names, arch/x86/include/asm/cpufeatures.h) that mean the CPU
# multiplies bf16 natively: AMX (tiles and their bf16 instructions) or AVX512-BF16.
AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})
AVX512_BF16_FLAG = "avx512_bf16"
# The Keras dtype policy of the hidden layers per precision: variables stay float32, the matrix
# products run in bfloat16 ("mixed_bfloat16").
_HIDDEN_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "mixed_bf16": "mixed_bfloat16"}
_KEPT_FP32 = ("Normalization",)


@dataclass(frozen=True)
class Decision:
    """The precision a shard computes in, and why (recorded in the shard result)."""

    precision: str
    requested: str
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The `flags` of /proc/cpuinfo (its first processor; every core of a host reports the same);
    empty where there is no such file (not Linux)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_native_bf16(flags: Iterable[str]) -> bool:
    flags = frozenset(flags)
    return AMX_FLAGS <= flags or AVX512_BF16_FLAG in flags


def decide(requested: str, *, allow_bf16: bool, flags: Iterable[str]) -> Decision:
    """fp32 and bf16 are taken as asked (bf16 is an explicit choice, slower without the
    instructions); auto is bf16 only with both the run's opt-in and the CPU's instructions."""
    if requested not in EVALUATION_PRECISIONS:
        from .errors import BadInput

        raise BadInput(f"precision {requested!r}: expected one of {', '.join(EVALUATION_PRECISIONS)}")
    native = has_native_bf16(flags)
    if requested == "fp32":
        return Decision("fp32", requested, "asked for fp32")
    if requested == "bf16":
        return Decision("bf16", requested, "asked for bf16" + ("" if native else
                                                              " (this CPU has no AMX or AVX512-BF16: emulated, slower)"))
    if not allow_bf16:
        return Decision("fp32", requested, "auto: the run did not opt in to bf16 (allow bf16)")
    if not native:
        return Decision("fp32", requested, "auto: this CPU reports neither AMX (amx_bf16, amx_tile) nor avx512_bf16")
    return Decision("bf16", requested, "auto: the run opted in and the CPU reports "
                    + ("AMX" if AMX_FLAGS <= frozenset(flags) else "AVX512-BF16"))


def with_precision(model: Any, precision: str) -> Any:
    """The model computing its hidden layers in `precision` ("fp32", "bf16", "mixed_bf16"), same
    weights; the model itself when nothing changes. The output layer and Normalization stay fp32."""
    import keras

    policy = _HIDDEN_POLICY[precision]
    last = model.layers[-1]

    def layer_policy(layer) -> str:
        return "float32" if layer is last or type(layer).__name__ in _KEPT_FP32 else policy

    if all(_policy_name(layer) == layer_policy(layer) for layer in model.layers):
        return model

    def clone(layer):
        config = {**layer.get_config(), "dtype": layer_policy(layer)}
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def model_precision(model: Any) -> str:
    """"mixed_bf16" when any hidden layer computes in bfloat16, else "fp32"."""
    return "mixed_bf16" if any(_policy_name(layer) == "mixed_bfloat16" for layer in model.layers) else "fp32"


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", None) or str(getattr(layer, "dtype", "float32"))

"""Continual learning: a model trained further from a stored parent, and the chain of parents.

`train --warm-start REF` loads the parent (weights and Normalization statistics) and trains it on
the run's own rows. The parent's recorded hyper-parameters are the defaults; a setting that would
change the network (layer widths, dropout, standardization) contradicts the weights being carried
over, so it is refused, naming the option. The new model's record names its parent
(`parent_model_id`), and `ancestry` follows those links back to the first model.

Pure: no TensorFlow (model.py imports Keras only inside its functions), so the operator can check
a TrainingRun's spec against its parent with `contradictions`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .errors import BadInput
from .model import RECIPES, TrainConfig, config_from_dict, with_overrides
from .store import ModelNotFound, ModelRef, Store

# The settings that shape the network; a warm start must keep the parent's.
ARCHITECTURE_FIELDS = ("hidden", "dropout", "normalize")


def parent_config(parent: Mapping[str, Any]) -> TrainConfig:
    """The recipe the parent was trained with, from its record."""
    hyperparameters = parent.get("hyperparameters")
    if not isinstance(hyperparameters, Mapping):
        raise BadInput(f"model {parent.get('model_id')} records no hyper-parameters, so it cannot be "
                       "warm-started")
    return config_from_dict(dict(hyperparameters))


def _shown(field: str, value: Any) -> str:
    if field == "hidden":
        return ",".join(str(w) for w in value)
    if field == "normalize":
        return "standardized inputs" if value else "no standardization"
    return f"{value:g}" if isinstance(value, float) else str(value)


def contradictions(parent: Mapping[str, Any], *, recipe: str | None = None,
                   hidden: tuple[int, ...] | None = None,
                   dropout: float | None = None) -> list[tuple[str, str]]:
    """The given settings that contradict the parent's architecture: (setting, why), in the
    order recipe, hidden, dropout; empty when a warm start may go on. `setting` is the field's
    name (`recipe`, `hidden`, `dropout`); callers name it their way (option or spec field)."""
    inherited = parent_config(parent).model
    problems: list[tuple[str, str]] = []
    if recipe is not None:
        theirs = RECIPES[recipe].model
        differ = [f for f in ARCHITECTURE_FIELDS if getattr(theirs, f) != getattr(inherited, f)]
        if differ:
            problems.append(("recipe", "; ".join(
                f"{f} {_shown(f, getattr(theirs, f))}, the parent's {_shown(f, getattr(inherited, f))}"
                for f in differ)))
    if hidden is not None and tuple(hidden) != tuple(inherited.hidden):
        problems.append(("hidden", f"the parent's hidden layers are {_shown('hidden', inherited.hidden)}"))
    if dropout is not None and float(dropout) != float(inherited.dropout):
        problems.append(("dropout", f"the parent's dropout is {_shown('dropout', inherited.dropout)}"))
    return problems


def warm_start_config(parent: Mapping[str, Any], *, recipe: str | None = None,
                      option_names: Mapping[str, str] | None = None, **overrides: Any) -> TrainConfig:
    """The config to continue `parent` with: its own recipe, `overrides` (None: keep) applied.

    An explicit `recipe` supplies the training settings (epochs, batch size, early stopping...)
    but the network stays the parent's. Raises BadInput naming the first contradicting option
    (`option_names` maps a setting to how the user wrote it, e.g. `hidden` -> `--hidden`).
    """
    names = {"recipe": "--recipe", "hidden": "--hidden", "dropout": "--dropout", **(option_names or {})}
    problems = contradictions(parent, recipe=recipe, hidden=overrides.get("hidden"),
                              dropout=overrides.get("dropout"))
    if problems:
        setting, why = problems[0]
        given = {"recipe": recipe, **overrides}[setting]
        shown = _shown(setting, given) if setting != "recipe" else given
        raise BadInput(f"{names[setting]} {shown} contradicts the warm-start parent, model "
                       f"{parent.get('model_id')}: {why}. A warm start keeps the parent's network; "
                       f"leave {names[setting]} out to take the parent's")
    inherited = parent_config(parent)
    base = inherited if recipe is None else replace(RECIPES[recipe], model=inherited.model)
    return with_overrides(base, **overrides)


def ancestry(store: Store, ref: ModelRef | str) -> list[dict[str, Any]]:
    """The model `ref` names, then its parent, and so on to a model trained from scratch.

    Records without their bytes. A parent no longer stored ends the chain as
    `{"model_id": ID, "deleted": True}`.
    """
    chain = [store.resolve_model(ref)]
    seen = {chain[0]["model_id"]}
    while True:
        parent_id = chain[-1].get("parent_model_id")
        if not parent_id or parent_id in seen:  # a loop cannot be saved, but never follow one
            return chain
        seen.add(parent_id)
        try:
            chain.append(store.resolve_model(ModelRef(model_id=parent_id)))
        except ModelNotFound:
            chain.append({"model_id": parent_id, "deleted": True})
            return chain

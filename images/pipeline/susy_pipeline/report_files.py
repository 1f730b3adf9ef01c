"""An aggregated evaluation as JSON and as a small PNG (the `report` command, and
`aggregate --report`, write them through `write_report`).

`NAME.json` is the aggregated result, with the ROC curve sampled at up to 257
points instead of the full histograms (with several models, one curve per model
under `models[].roc`); `NAME.png` shows the ROC curve of every model (the
ensemble's dashed) with its AUC, and rows and accuracy per shard, for people who
would rather look than read. Imports matplotlib (Agg backend) only when drawing.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from .evaluation import printable, roc_from_histograms

ROC_POINTS = 257


def roc_points(result: Mapping[str, Any], points: int = ROC_POINTS) -> dict[str, list[float]]:
    """The ROC curve from the merged histograms (of the result, or of one `models` entry),
    thinned to about `points` points."""
    hist = result["histogram"]
    fpr, tpr = roc_from_histograms(hist["positive"], hist["negative"])
    keep = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
    return {"fpr": [round(float(v), 6) for v in fpr[keep]], "tpr": [round(float(v), 6) for v in tpr[keep]]}


def _file_stem(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name or "evaluation").strip("._") or "evaluation"


def write_report(result: Mapping[str, Any], out_dir: str, stem: str | None = None) -> dict[str, Any]:
    """Write `<stem>.json` and `<stem>.png` into out_dir; return their paths and the headline figures."""
    os.makedirs(out_dir, exist_ok=True)
    stem = _file_stem(stem or result.get("evaluation"))
    json_path = os.path.join(out_dir, f"{stem}.json")
    png_path = os.path.join(out_dir, f"{stem}.png")
    document = {**printable(result), "roc": roc_points(result)}
    if len(result.get("models") or ()) > 1:
        document["models"] = [{**{k: v for k, v in m.items() if k != "histogram"}, "roc": roc_points(m)}
                              for m in result["models"]]
    with open(json_path + ".partial", "w") as f:
        json.dump(document, f, indent=2, default=str)
    os.replace(json_path + ".partial", json_path)
    plot(document, png_path)
    return {"evaluation": result.get("evaluation"), "json": json_path, "png": png_path,
            "rows": result["rows"], "accuracy": result["accuracy"], "log_loss": result["log_loss"],
            "auc": result["auc"], **({"best": result.get("best")} if len(result.get("models") or ()) > 1 else {})}


def plot(document: Mapping[str, Any], path: str) -> None:
    """ROC curve (left) and rows and accuracy per shard (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, shard_ax) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    curves = document["models"] if len(document.get("models") or ()) > 1 else [
        {"name": None, "roc": document["roc"], "auc": document.get("auc")}]
    for i, curve in enumerate(curves):
        roc, auc = curve["roc"], curve.get("auc")
        label = f"AUC {auc:.4f}" if auc is not None else "AUC n/a"
        if curve.get("name"):
            name = str(curve["name"])
            label = f"{name[:12] if len(name) == 32 else name[:24]}  {label}"
        roc_ax.plot(roc["fpr"], roc["tpr"], color=f"C{i % 10}", linewidth=1.2,
                    linestyle="--" if curve.get("members") is not None else "-", label=label)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
               title="ROC (signal vs background)")
    roc_ax.legend(loc="lower right", fontsize="small" if len(curves) > 1 else None)

    shards = document.get("shards") or []
    index = [s["shard_index"] for s in shards]
    rows = [s["rows"] for s in shards]
    shard_ax.bar(index, rows, color="tab:grey", alpha=0.6, label="rows")
    shard_ax.set(xlabel="shard", ylabel="rows", title=f"{len(shards)} shards, {document['rows']:,} rows")
    shard_ax.set_xticks(index)
    acc_ax = shard_ax.twinx()
    acc = [s["accuracy"] if s["accuracy"] is not None else np.nan for s in shards]
    acc_ax.plot(index, acc, "o", color="tab:orange", label="accuracy")
    if document.get("accuracy") is not None:
        acc_ax.axhline(document["accuracy"], color="tab:orange", linestyle="--", linewidth=1,
                       label=f"total {document['accuracy']:.4f}")
    acc_ax.set_ylabel("accuracy")
    finite = [a for a in acc if a == a]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = max(0.01, (hi - lo) * 0.5)
        acc_ax.set_ylim(lo - pad, hi + pad)
    acc_ax.legend(loc="lower right", fontsize="small")
    members = [c for c in curves if c.get("members") is None]
    models = (f"{len(members)} models" + (" and their ensemble" if len(members) < len(curves) else "")
              + "  (shards: the first model's accuracy)") if len(curves) > 1 else \
        f"model {str(document.get('model_id'))[:12]}"
    fig.suptitle(f"evaluation {document.get('evaluation')}  {models}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path + ".partial.png")
    plt.close(fig)
    os.replace(path + ".partial.png", path)

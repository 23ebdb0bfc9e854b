"""What the train / validation / test splits of a run hold, and warnings when a split is too
small to measure anything (recorded in run.json as ``split_composition`` and
``split_warnings``, shown in report.md; docs/experiments.md).

Per split: ``items``, items per class, items lacking each modality (inputs that are None; for
a lazy split, which is not loaded, its ``meta["missing"]``: see :class:`multiturbo.dataset.Dataset`), the number of distinct groups (the data set's ``group_key``, e.g. a speaker) and a
``fingerprint`` of the split's membership (a hash of its labels and metadata in order), so
that two runs can be checked to share their split without reading the data.

Thresholds (:data:`MIN_EVAL_ITEMS`, :data:`MIN_CLASS_ITEMS`): a validation or test split of
fewer than 50 items, or a class with fewer than 10 items in any split (0: absent), is warned
about: its accuracy moves by 2 points or more per item, and early stopping on it picks an
epoch by noise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .dataset import Sample, Splits

MIN_EVAL_ITEMS = 50  # a validation or test split below this is warned about
MIN_CLASS_ITEMS = 10  # a class below this many items in a split is warned about (0 = absent)
SPLITS = ("train", "val", "test")


def _labels_meta(split: Sequence[Sample]) -> tuple[list[int], list[Mapping[str, Any]], list[Sample] | None]:
    """Labels and metadata without loading a lazy split; the samples themselves for an in-memory one."""
    if hasattr(split, "labels") and hasattr(split, "meta"):
        return list(split.labels), list(split.meta), None
    samples = list(split)
    return [s.label for s in samples], [s.meta for s in samples], samples


def _fingerprint(labels: list[int], meta: list[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for label, m in zip(labels, meta):
        h.update(json.dumps([label, m], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def split_composition(splits: Splits, classes: Sequence[str], modalities: Sequence[str], group_key: str | None = None) -> dict[str, dict]:
    """``{split: {"items", "classes": {name: n}, "missing": {modality: n}, "groups": n or None, "fingerprint"}}``."""
    out = {}
    for name in SPLITS:
        labels, meta, samples = _labels_meta(getattr(splits, name))
        counts = {c: 0 for c in classes}
        for label in labels:
            counts[classes[label]] += 1
        if samples is not None:
            missing = {mod: sum(s.inputs.get(mod) is None for s in samples) for mod in modalities}
        else:  # a lazy split: the data set contract's meta["missing"] (absent: the item lacks nothing)
            missing = {mod: sum(mod in m.get("missing", ()) for m in meta) for mod in modalities}
        groups = len({str(m.get(group_key)) for m in meta}) if group_key else None
        out[name] = {"items": len(labels), "classes": counts, "missing": missing, "groups": groups,
                     "fingerprint": _fingerprint(labels, meta)}
    return out


ID_KEYS = ("id", "utterance", "name", "line", "index")  # the item's id in its metadata, the first one present


def split_membership(splits: Splits) -> dict[str, Any]:
    """Which items each split holds, by id, in order: ``{"id": the meta key used, "train": [ids],
    "val": [...], "test": [...]}`` (written to the run directory as splits.json). The id is the
    first of :data:`ID_KEYS` that every item's metadata has (IEMOCAP: ``utterance``; manifest:
    ``line``; synthetic: ``index``), else the item's position in its split (``"id": null``)."""
    metas = {name: _labels_meta(getattr(splits, name))[1] for name in SPLITS}
    every = [m for name in SPLITS for m in metas[name]]
    key = next((k for k in ID_KEYS if every and all(isinstance(m, Mapping) and k in m for m in every)), None)
    out: dict[str, Any] = {"id": key}
    for name in SPLITS:
        out[name] = [m[key] for m in metas[name]] if key else list(range(len(metas[name])))
    return out


def composition_warnings(composition: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per problem: a small validation / test split, a class absent or rare in a split."""
    warnings = []
    what = {"val": "validation", "test": "test", "train": "train"}
    for name in SPLITS:
        part = composition.get(name)
        if not part:
            continue
        n = part["items"]
        if name != "train" and n < MIN_EVAL_ITEMS:
            use = "early stopping and the best epoch" if name == "val" else "the test metrics"
            warnings.append(
                f"The {what[name]} split has {n} items (< {MIN_EVAL_ITEMS}): one item moves its accuracy by "
                f"{100 / max(n, 1):.1f} points, so {use} mostly measure noise. Give it more items (a larger fraction, "
                f"or folds: docs/experiments.md)."
            )
        rare = [(c, k) for c, k in part["classes"].items() if k < MIN_CLASS_ITEMS]
        if rare:
            listed = ", ".join(f"{c} {'absent' if k == 0 else k}" for c, k in rare)
            warnings.append(
                f"The {what[name]} split has fewer than {MIN_CLASS_ITEMS} items of some classes ({listed}): "
                f"their recall (and UA) there is unreliable. Stratify the split, enlarge it, or merge rare classes."
            )
    return warnings


def best_epoch_warning(val_items: int, best_epoch: int, epochs_run: int) -> str | None:
    """A warning when early stopping kept the first epoch of several, chosen on a small validation split."""
    if val_items >= MIN_EVAL_ITEMS or best_epoch != 1 or epochs_run < 2:
        return None
    return (f"The best epoch was epoch 1 of {epochs_run}, chosen on a validation split of {val_items} items (< {MIN_EVAL_ITEMS}): "
            f"the choice is likely noise, and the test metrics are those of a barely trained model. Enlarge the validation "
            f"split, or raise train.patience.")


def composition_markdown(composition: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines: a table of items per class (and missing modalities, groups) per split."""
    names = [s for s in SPLITS if s in composition]
    if not names:
        return []
    classes = list(composition[names[0]]["classes"])
    rows = [["items", *[composition[s]["items"] for s in names]]]
    rows += [[f"class {c}", *[composition[s]["classes"].get(c, 0) for s in names]] for c in classes]
    missing = [composition[s].get("missing") or {} for s in names]
    if any(any(m.values()) for m in missing):
        rows += [[f"lacking {mod}", *[m.get(mod, 0) for m in missing]] for mod in missing[0]]
    if all(composition[s].get("groups") is not None for s in names):
        rows += [["groups", *[composition[s]["groups"] for s in names]]]
    lines = ["| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return lines

"""Comparing two configs: which keys differ, leaving out those that do not change results."""

from __future__ import annotations

from typing import Any

# Config keys that may differ between a run and its resumption, or between the runs of one
# plan (they do not change what is computed).
RESUME_MAY_CHANGE = ("train.device", "train.num_workers", "train.checkpoint_every", "train.nonfinite", "train.nonfinite_max_skips",
                     "train.audio_cache", "train.audio_cache_dir", "train.frozen_features_store", "train.frozen_features_dir",
                     "train.tracking", "train.tracking_uri", "train.tracking_experiment")
IGNORED_SECTIONS = ("tune",)  # read by `multiturbo tune` only: never part of what a run computes
ABSENT = "(absent)"


def result_relevant(config: dict) -> dict:
    """A config mapping (``model_dump(mode="json")`` or config.yaml) without the keys of
    :data:`RESUME_MAY_CHANGE` and the sections of :data:`IGNORED_SECTIONS`, which do not change
    what a run computes: what runs compare on."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items() if k not in IGNORED_SECTIONS}
    for key in RESUME_MAY_CHANGE:
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key whose value differs (``ABSENT`` where
    one side lacks it), in the order of ``old`` then ``new``; the keys of
    :data:`RESUME_MAY_CHANGE` are left out."""
    a, b = _flatten(result_relevant(old)), _flatten(result_relevant(new))
    keys = dict.fromkeys([*a, *b])
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys if a.get(k, ABSENT) != b.get(k, ABSENT)]


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int, line: str = "{key}: {old!r} -> {new!r}") -> list[str]:
    """At most ``limit`` lines ``line.format(key=, old=, new=)``, then ``... and N more``."""
    lines = [line.format(key=k, old=o, new=n) for k, o, n in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"... and {len(diffs) - limit} more")
    return lines

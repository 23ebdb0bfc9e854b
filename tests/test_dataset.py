"""LazySplit: samples built on access; labels and meta known without loading."""

from __future__ import annotations

import pickle
from functools import partial
from operator import itemgetter

from multiturbo.dataset import LazySplit, Sample

LOADED: list[int] = []


def _load(prefix: str, record: dict) -> Sample:
    LOADED.append(record["id"])
    return Sample(inputs={"text": f"{prefix}{record['id']}"}, label=record["label"], meta=record["meta"])


def test_lazy_split_loads_on_access_only_and_slices_lazily():
    records = [{"id": i, "label": i % 2, "meta": {"speaker": f"s{i}"}} for i in range(5)]
    split = LazySplit(records, partial(_load, "item"), itemgetter("label"), itemgetter("meta"))
    LOADED.clear()
    assert len(split) == 5 and split.labels == [0, 1, 0, 1, 0] and split.meta[2] == {"speaker": "s2"}
    tail = split[3:]
    assert LOADED == [] and isinstance(tail, LazySplit) and tail.labels == [1, 0]
    assert tail[0].inputs == {"text": "item3"} and LOADED == [3]
    assert pickle.loads(pickle.dumps(split))[1].label == 1  # picklable for spawned DataLoader workers

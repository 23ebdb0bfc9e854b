"""composition.py: items per class / missing modality / group per split, and the split warnings."""

from __future__ import annotations

from multiturbo.composition import MIN_CLASS_ITEMS, best_epoch_warning, MIN_EVAL_ITEMS, composition_markdown, composition_warnings, split_composition
from multiturbo.dataset import LazySplit, Sample, Splits


def samples(labels: list[int], missing_every: int = 0) -> list[Sample]:
    return [Sample({"a": 1, "b": None if missing_every and i % missing_every == 0 else 2}, y, {"index": i, "spk": i % 3})
            for i, y in enumerate(labels)]


def test_counts_per_split_in_memory_and_lazy():
    train = samples([0, 1] * 40, missing_every=4)
    records = [{"label": y, "meta": {"spk": f"s{i % 2}", **({"missing": ["b"]} if i < 3 else {})}} for i, y in enumerate([0] * 60 + [1] * 5)]
    lazy = LazySplit(records, load=lambda r: None, label=lambda r: r["label"], meta=lambda r: r["meta"])
    c = split_composition(Splits(train=train, val=lazy, test=samples([0] * 50)), ["x", "y"], ["a", "b"], group_key="spk")
    assert c["train"]["items"] == 80 and c["train"]["classes"] == {"x": 40, "y": 40}
    assert c["train"]["missing"] == {"a": 0, "b": 20} and c["train"]["groups"] == 3
    assert c["val"]["classes"] == {"x": 60, "y": 5} and c["val"]["missing"] == {"a": 0, "b": 3} and c["val"]["groups"] == 2
    assert c["test"]["classes"] == {"x": 50, "y": 0}
    # the fingerprint follows membership
    again = split_composition(Splits(train=samples([0, 1] * 40, 4), val=lazy, test=samples([0] * 50)), ["x", "y"], ["a", "b"])
    assert again["train"]["fingerprint"] == c["train"]["fingerprint"] and again["train"]["groups"] is None
    other = split_composition(Splits(train=samples([1, 0] * 40), val=lazy, test=samples([0] * 50)), ["x", "y"], ["a", "b"])
    assert other["train"]["fingerprint"] != c["train"]["fingerprint"]
    table = "\n".join(composition_markdown(c))
    assert "| class y | 40 | 5 | 0 |" in table and "| lacking b | 20 | 3 | 0 |" in table and "| groups | 3 | 2 | 3 |" in table


def test_warnings_name_small_splits_and_rare_or_absent_classes():
    big = samples([0, 1] * 40)
    fine = split_composition(Splits(train=big, val=big, test=big), ["x", "y"], ["a", "b"])
    assert composition_warnings(fine) == []
    small = split_composition(Splits(train=big, val=samples([0, 1] * 10), test=samples([0] * 60)), ["x", "y"], ["a", "b"])
    w = composition_warnings(small)
    assert len(w) == 2, w  # val: 20 items (10 of each class: not rare); test: class y absent
    assert f"validation split has 20 items (< {MIN_EVAL_ITEMS})" in w[0] and "early stopping" in w[0]
    assert f"fewer than {MIN_CLASS_ITEMS} items of some classes (y absent)" in w[1] and w[1].startswith("The test split")
    rare = split_composition(Splits(train=samples([0] * 71 + [1] * 9), val=big, test=big), ["x", "y"], ["a", "b"])
    assert composition_warnings(rare) == [w for w in composition_warnings(rare) if w.startswith("The train split")]
    assert "(y 9)" in composition_warnings(rare)[0]
    assert MIN_EVAL_ITEMS == 50 and MIN_CLASS_ITEMS == 10


def test_the_first_epoch_kept_on_a_small_validation_split_is_warned_about():
    assert "epoch 1 of 5, chosen on a validation split of 12 items" in best_epoch_warning(12, 1, 5)
    assert best_epoch_warning(12, 2, 5) is None and best_epoch_warning(12, 1, 1) is None
    assert best_epoch_warning(MIN_EVAL_ITEMS, 1, 5) is None

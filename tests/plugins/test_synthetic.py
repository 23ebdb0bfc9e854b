"""Tests of the synthetic data set plugin."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydantic
import pytest

from multiturbo.dataset import Dataset, Sample
from multiturbo.errors import DataError
from multiturbo_synthetic import FILLERS, SyntheticDataset, class_words, content_words

ALL = ["audio", "text", "image"]


def make(seed: int = 0, **options) -> SyntheticDataset:
    options.setdefault("size", 120)
    options.setdefault("seconds", 0.1)
    return SyntheticDataset(SyntheticDataset.Options(**options), seed=seed)


def items(ds: SyntheticDataset) -> list[Sample]:
    s = ds.splits()
    return [*s.train, *s.val, *s.test]


def same_samples(a: list[Sample], b: list[Sample]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x.label != y.label or x.meta != y.meta or set(x.inputs) != set(y.inputs):
            return False
        for m in x.inputs:
            if not np.array_equal(np.asarray(x.inputs[m]), np.asarray(y.inputs[m])):
                return False
    return True


def test_is_a_dataset_with_classes_and_modalities():
    ds = make(num_classes=5, modalities=["text", "image"])
    assert isinstance(ds, Dataset)
    assert ds.classes == ["class0", "class1", "class2", "class3", "class4"]
    assert ds.modalities == ("text", "image")
    assert ds.num_folds == 1
    assert SyntheticDataset.Options().modalities == ["audio", "text"]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make(seed=1, modalities=ALL), make(seed=1, modalities=ALL), make(seed=2, modalities=ALL)
    assert same_samples(items(a), items(b))
    xa, xc = items(a), items(c)
    for m in ALL:
        assert not all(np.array_equal(np.asarray(p.inputs[m]), np.asarray(q.inputs[m])) for p, q in zip(xa, xc))


def test_a_modality_does_not_change_when_another_is_added():
    two, three = items(make(seed=3, modalities=["audio", "text"])), items(make(seed=3, modalities=ALL))
    for p, q in zip(two, three, strict=True):
        assert np.array_equal(p.inputs["audio"], q.inputs["audio"]) and p.inputs["text"] == q.inputs["text"]


def test_splits_sizes_balance_and_disjointness():
    ds = make(size=200, num_classes=4, val_fraction=0.1, test_fraction=0.2)
    s = ds.splits()
    assert (len(s.train), len(s.val), len(s.test)) == (140, 20, 40)
    for split in (s.train, s.val, s.test):
        counts = Counter(x.label for x in split)
        assert sorted(counts) == [0, 1, 2, 3]
        assert max(counts.values()) - min(counts.values()) <= 1
    indices = [x.meta["index"] for x in items(ds)]
    assert sorted(indices) == list(range(200))
    assert ds.splits() is s  # generated once


def test_labels_are_shuffled_within_a_split():
    labels = [x.label for x in make(size=200).splits().train]
    assert labels != sorted(labels) and labels[:8] != [0, 1, 2, 3, 0, 1, 2, 3]


def test_raw_input_types_and_shapes():
    ds = make(modalities=ALL, sample_rate=8000, seconds=0.25, image_size=12)
    for x in items(ds)[:10]:
        assert set(x.inputs) == set(ALL)
        audio, text, image = x.inputs["audio"], x.inputs["text"], x.inputs["image"]
        assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.shape == (2000,)
        assert np.isfinite(audio).all()
        assert isinstance(text, str) and 6 + 3 <= len(text.split()) <= 12 + 3  # + the 3 content words
        assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.shape == (12, 12)
        assert isinstance(x.label, int) and 0 <= x.label < 4


def test_text_words_come_from_the_vocabularies():
    vocab = set(FILLERS).union(*(class_words(c) for c in range(4)), content_words(7))
    assert len(set().union(*(class_words(c) for c in range(4)))) == 32  # no word shared by two classes
    for x in items(make(modalities=["text"])):
        assert set(x.inputs["text"].split()) <= vocab


def test_noise_controls_how_much_class_signal_the_text_carries():
    def class_word_share(noise: float) -> float:
        xs = items(make(size=400, modalities=["text"], noise={"text": noise}))
        own = [np.mean([w in class_words(x.label) for w in x.inputs["text"].split()]) for x in xs]
        return float(np.mean(own))

    assert class_word_share(0.0) > class_word_share(1.0) > class_word_share(4.0)


def test_default_task_is_neither_trivial_nor_hopeless():
    """Simple oracles (count class words; energy at class tones) beat chance but are far from perfect."""
    ds = SyntheticDataset(SyntheticDataset.Options(), seed=0)
    xs = items(ds)
    y = np.array([x.label for x in xs])
    vocab = [set(class_words(c)) for c in range(4)]
    counts = np.array([[sum(w in v for w in x.inputs["text"].split()) for v in vocab] for x in xs], dtype=float)
    text_acc = ((counts + 1e-3 * np.random.default_rng(0).random(counts.shape)).argmax(1) == y).mean()

    wave = np.stack([x.inputs["audio"] for x in xs])
    power = np.abs(np.fft.rfft(wave, axis=1)) ** 2
    freqs = np.fft.rfftfreq(wave.shape[1], 1 / ds.options.sample_rate)
    grid = np.geomspace(300.0, 4000.0, 8)
    energy = lambda f: power[:, (freqs > 0.95 * f) & (freqs < 1.05 * f)].sum(1)  # noqa: E731
    score = np.stack([np.minimum(energy(grid[c]), energy(grid[c + 4])) for c in range(4)], 1)  # both class tones
    audio_acc = (score.argmax(1) == y).mean()
    for acc in (text_acc, audio_acc):
        assert 0.45 < acc < 0.95


def test_fold_other_than_zero_is_an_error():
    ds = make()
    assert ds.splits(0) is ds.splits(None)
    with pytest.raises(DataError, match="single fold"):
        ds.splits(1)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"modalities": ["audio", "video"]}, "modalities"),
        ({"modalities": ["text", "text"]}, "must not repeat"),
        ({"modalities": []}, "modalities"),
        ({"noise": {"image": 1.0}}, "not rendered"),
        ({"noise": {"text": -1.0}}, ">= 0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"num_classes": 1}, "num_classes"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        SyntheticDataset.Options(**options)


def test_too_small_to_train_is_a_data_error():
    with pytest.raises(DataError, match="no item to train"):
        make(size=2, val_fraction=0.45, test_fraction=0.45).splits()


def test_default_generation_is_fast():
    import time

    start = time.perf_counter()
    SyntheticDataset(SyntheticDataset.Options(modalities=ALL), seed=0).splits()
    assert time.perf_counter() - start < 5.0  # typically ~0.3 s on 2 CPU cores

"""The ``synthetic`` data set: a small generated multi-modal classification task.

It needs no files and no network, so it drives the demo config, the tests and quick
experiments. Everything is drawn from numpy generators seeded by the ``seed`` given
to the constructor: the same seed gives the same data, another seed another draw of
the same task (the class-specific structure below does not depend on the seed). The engine
passes the config's ``data.split_seed`` (default 0), not the training ``seed``: the data and
the split stay the same for every training seed of an experiment, so seeds change only the
training; set ``data.split_seed`` to draw another data set.

How an item is made
-------------------
Item i has a class ``y`` (classes balanced: label counts differ by at most one) and two
item-level latents that every modality of the item shares, as real paired data share what
was said:

- its *intensity* ``a ~ Uniform(0.5, 1.5)``: how clearly the item expresses its class (a
  clear item is clear everywhere, like a strongly acted emotion);
- its *content*: ``shared_content`` distinct tokens (default min(3, 2C - 2)) drawn uniformly from a
  content vocabulary of V = 2C - 1 tokens, independent of the class (like the words of an
  utterance, which a transcript and its recording share whatever the emotion). Each
  modality renders them in its own way (below). ``shared_content: 0`` renders items that
  share only the class and the intensity: then cross-modal InfoNCE has almost nothing to
  match item by item (docs/training-dynamics.md).

Apart from these, each modality renders its OWN noisy view, with independent noise.
``noise[m]`` (default 1.0) scales how much item-level noise drowns the signal in modality m.

- audio: ``seconds`` of waveform at ``sample_rate``. A fixed grid of 2C tone
  frequencies, log-spaced from 300 Hz to min(4 kHz, 0.4 sample_rate); class c owns
  two of them (grid[c], grid[c + C]). The item sums its class's two tones (amplitude
  ``a * U(0.5, 1)``) and two distractor tones picked uniformly from the whole grid
  (amplitude ``U(0.5, 1)``, so they may belong to any class), each with +-2% frequency
  jitter and a random phase, plus one tone per content token at the geometric midpoint of
  two neighbouring grid tones (token t: between grid[t] and grid[t + 1]; amplitude
  ``U(0.5, 1)``), plus white Gaussian noise of standard deviation
  ``AUDIO_NOISE * noise["audio"]``. float32 array [T].
- text: a sentence of 6 to 12 words. Each word is, with probability
  ``p = clip(a / (1 + TEXT_NOISE * noise["text"]), 0, 1)`` (0.25 on average at the
  defaults, at least 0.5 at noise 0), a word of
  the item's class vocabulary (8 made-up words per class); otherwise, with equal
  chances, a neutral English filler word or a word of a uniformly random class's
  vocabulary (so the text is ambiguous, not merely sparse); then the item's content
  words (one made-up word per content token, see ``content_words``) are inserted at
  random positions. str.
- image: an ``image_size`` x ``image_size`` grayscale array: a sinusoidal grating whose
  orientation is the class's (pi * c / C, jittered by N(0, 0.15) rad) with a random
  spatial frequency and phase, contrast ``0.25 * a``, on a 0.5 background, plus
  a bright 2 x 2 dot (+0.5) per content token at the token's place on a ring around the
  centre, plus Gaussian pixel noise of standard deviation ``IMAGE_NOISE * noise["image"]``.
  float32 array [S, S] (not clipped).

The constants were set so that, at the defaults, a simple classifier on any single
modality is clearly better than chance but far from perfect, so combining modalities
helps. Nothing in the generator is tuned for a training method: the modalities share
the class, the intensity and the content tokens, nothing else.

Splits are stratified: test first, then validation, then train, each split's
positions shuffled. ``meta`` holds ``index`` (the item's position in the data set)
and ``intensity``.

Missing modalities (option ``missing_rate``, e.g. ``{image: 0.3}``): each item lacks
modality m with probability ``missing_rate[m]``, independently, drawn from a stream of its
own (the rendered data do not change); its input is then ``None``. An item that would lack
every modality keeps one, chosen uniformly. ``meta["missing"]`` lists what an item lacks.

Folds (option ``folds`` > 1, for cross-validation): the items are cut into ``folds``
stratified parts of (nearly) equal size instead; fold f tests part f, validates on part
(f + 1) % folds and trains on the others (``val_fraction`` and ``test_fraction`` are then
unused). ``folds: 1`` (the default) gives exactly the single split described above.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from multiturbo.dataset import Dataset, DatasetOptions, Sample, Splits
from multiturbo.errors import DataError
from multiturbo.hookspecs import Register, hookimpl

Kind = Literal["audio", "text", "image"]
KINDS: tuple[str, ...] = ("audio", "text", "image")

AUDIO_NOISE = 3.0  # Gaussian noise std of the waveform at noise["audio"] = 1 (tone amplitudes are <= 1.5)
IMAGE_NOISE = 0.65  # Gaussian pixel noise std at noise["image"] = 1 (grating contrast is 0.25 * a)
TEXT_NOISE = 3.0  # class-word probability is a / (1 + TEXT_NOISE * noise["text"])

_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "no", "sa", "vi", "po", "ze", "du", "fa", "gi", "he", "jo", "bu")
FILLERS = (
    "the a of and to in is it that was for on with as at by this from or one had but not what all were when we "
    "there can an your which their said if do will each about how up out them then she many some so these would "
    "other into has more her two like him see time could no make than first been its who now people my made over "
    "did down only way find use may water long little very after words called just where most know"
).split()


_WORD_CODES = np.random.default_rng(20240917).permutation(len(_SYLLABLES) ** 3)  # fixed, seed-independent


def content_words(v: int) -> list[str]:
    """The made-up words of the content vocabulary (v tokens), distinct from every class word."""
    words = []
    for j in range(v):
        code = int(_WORD_CODES[len(_WORD_CODES) - 1 - j])
        words.append(_SYLLABLES[code // 256] + _SYLLABLES[code // 16 % 16] + _SYLLABLES[code % 16])
    return words


def content_vocab_size(num_classes: int) -> int:
    """V = 2C - 1: one content tone between each two neighbouring tones of the class grid."""
    return 2 * num_classes - 1


def class_words(c: int, n: int = 8) -> list[str]:
    """The made-up vocabulary of class c: n three-syllable words, the same for every seed."""
    words = []
    for j in range(c * n, (c + 1) * n):
        code = int(_WORD_CODES[j % len(_WORD_CODES)])
        syllables = (_SYLLABLES[code // 256], _SYLLABLES[code // 16 % 16], _SYLLABLES[code % 16])
        words.append("".join(syllables) + (str(j // len(_WORD_CODES)) if j >= len(_WORD_CODES) else ""))
    return words


class SyntheticOptions(DatasetOptions):
    modalities: list[Kind] = Field(
        default_factory=lambda: ["audio", "text"], min_length=1, description="Modalities to render (name = kind)."
    )
    num_classes: int = Field(4, ge=2, description="Number of classes (balanced).")
    size: int = Field(1000, ge=2, description="Number of items in total (all splits).")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the items in the validation split.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of the items in the test split.")
    noise: dict[Kind, float] = Field(default_factory=dict, description="Per-modality noise scale (default 1.0 each).")
    sample_rate: int = Field(16000, ge=1000, description="Audio sample rate (Hz).")
    seconds: float = Field(0.5, gt=0.0, le=60.0, description="Audio length (s).")
    image_size: int = Field(16, ge=4, description="Images are image_size x image_size.")
    missing_rate: dict[Kind, float] = Field(
        default_factory=dict, description="Per-modality probability that an item lacks it (input None); default 0."
    )
    shared_content: int | None = Field(
        None, ge=0,
        description="Content tokens per item, shared by all its modalities (drawn from 2C - 1 tokens, independent of the class); None = min(3, 2C - 2); 0 = the modalities share only the class and the intensity.",
    )
    folds: int = Field(
        1, ge=1, description="1: one train/val/test split; >= 3: that many stratified folds (test f, val f+1, train the rest)."
    )

    @field_validator("modalities")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"modalities must not repeat a name, got {v}")
        return v

    @field_validator("noise")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not (x >= 0.0 and math.isfinite(x))}
        if bad:
            raise ValueError(f"noise levels must be finite and >= 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SyntheticOptions":
        if self.folds == 2 or self.folds > self.size:
            raise ValueError(f"folds must be 1, or between 3 and size={self.size} (train, val and test parts), got {self.folds}")
        if self.shared_content is None:
            self.shared_content = min(3, content_vocab_size(self.num_classes) - 1)
        if self.shared_content > content_vocab_size(self.num_classes):
            raise ValueError(
                f"shared_content must be at most 2 * num_classes - 1 = {content_vocab_size(self.num_classes)} (the content "
                f"vocabulary), got {self.shared_content}"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (leave items to train), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        bad = {k: r for k, r in self.missing_rate.items() if not 0.0 <= r < 1.0 or k not in self.modalities}
        if bad:
            raise ValueError(f"missing_rate needs rendered modalities and rates in [0, 1), got {bad} (modalities: {self.modalities})")
        extra = sorted(set(self.noise) - set(self.modalities))
        if extra:
            raise ValueError(f"noise names modalities that are not rendered: {extra} (modalities: {self.modalities})")
        return self


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per stream, so adding a modality does not change the others."""
    return np.random.default_rng([seed % 2**63, int(seed < 0), stream])


def render_audio(
    labels: np.ndarray, intensity: np.ndarray, content: np.ndarray, rng: np.random.Generator, o: SyntheticOptions, noise: float
) -> np.ndarray:
    """Waveforms [N, T] float32: two class tones + two distractor tones + one tone per content token
    (content: [N, n_content] token ids) + white noise."""
    n, c = len(labels), o.num_classes
    t = np.arange(max(1, round(o.seconds * o.sample_rate)), dtype=np.float32) / o.sample_rate  # [T]
    grid = np.geomspace(300.0, min(4000.0, 0.4 * o.sample_rate), 2 * c)  # [2C]
    idx = np.stack([labels, labels + c, rng.integers(0, 2 * c, n), rng.integers(0, 2 * c, n)], axis=1)  # [N, 4]
    freq = grid[idx] * (1.0 + 0.02 * rng.standard_normal(idx.shape))  # [N, 4]
    amp = rng.uniform(0.5, 1.0, idx.shape)
    amp[:, :2] *= intensity[:, None]  # the class tones carry the item's intensity
    phase = rng.uniform(0.0, 2 * np.pi, idx.shape)
    wave = np.zeros((n, t.size), dtype=np.float32)
    for k in range(idx.shape[1]):  # 4 tones, each vectorised over items and time
        arg = (2 * np.pi * freq[:, k, None]).astype(np.float32) * t + phase[:, k, None].astype(np.float32)
        wave += amp[:, k, None].astype(np.float32) * np.sin(arg)
    if content.shape[1]:
        between = np.sqrt(grid[:-1] * grid[1:])  # [2C - 1] geometric midpoints
        cf = between[content] * (1.0 + 0.02 * rng.standard_normal(content.shape))  # [N, n_content]
        camp = rng.uniform(0.5, 1.0, content.shape)
        cphase = rng.uniform(0.0, 2 * np.pi, content.shape)
        for k in range(content.shape[1]):
            arg = (2 * np.pi * cf[:, k, None]).astype(np.float32) * t + cphase[:, k, None].astype(np.float32)
            wave += camp[:, k, None].astype(np.float32) * np.sin(arg)
    wave += (AUDIO_NOISE * noise) * rng.standard_normal(wave.shape, dtype=np.float32)
    return wave


def render_text(
    labels: np.ndarray, intensity: np.ndarray, content: np.ndarray, rng: np.random.Generator, o: SyntheticOptions, noise: float
) -> list[str]:
    """Sentences of 6-12 words (class words with probability p, else filler words or random-class
    words) with the item's content words inserted at random places: 6-12 + n_content words."""
    vocab = [class_words(c) for c in range(o.num_classes)]
    n, max_len = len(labels), 12
    lengths = rng.integers(6, max_len + 1, n)
    p = np.clip(intensity / (1.0 + TEXT_NOISE * noise), 0.0, 1.0)[:, None]  # [N, 1]
    u = rng.random((n, max_len))
    kind = np.where(u < p, 0, np.where(u < (1 + p) / 2, 1, 2))  # [N, 12]: 0 own class, 1 filler, 2 random class
    word_class = np.where(kind == 0, labels[:, None], rng.integers(0, o.num_classes, (n, max_len)))
    word_pick = rng.integers(0, 8, (n, max_len))
    filler_pick = rng.integers(0, len(FILLERS), (n, max_len))
    said = content_words(content_vocab_size(o.num_classes))
    slots = rng.random((n, content.shape[1]))  # where each content word goes, as a share of the sentence
    sentences = []
    for i in range(n):
        words = [
            FILLERS[filler_pick[i, j]] if kind[i, j] == 1 else vocab[word_class[i, j]][word_pick[i, j]]
            for j in range(lengths[i])
        ]
        for token, where in zip(content[i], slots[i]):
            words.insert(int(where * (len(words) + 1)), said[token])
        sentences.append(" ".join(words))
    return sentences


def render_image(
    labels: np.ndarray, intensity: np.ndarray, content: np.ndarray, rng: np.random.Generator, o: SyntheticOptions, noise: float
) -> np.ndarray:
    """Images [N, S, S] float32: an oriented grating (orientation = class) + a dot per content token + pixel noise."""
    n, size = len(labels), o.image_size
    theta = np.pi * labels / o.num_classes + 0.15 * rng.standard_normal(n)  # [N]
    freq = rng.uniform(0.12, 0.25, n)  # cycles per pixel
    phase = rng.uniform(0.0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)  # [S, S]
    proj = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy  # [N, S, S]
    grating = np.cos(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    image = 0.5 + 0.25 * intensity[:, None, None] * grating
    v = content_vocab_size(o.num_classes)
    angle = 2 * np.pi * np.arange(v) / v
    row = np.clip(np.round(size / 2 - 1 + 0.3 * size * np.sin(angle)).astype(int), 0, size - 2)  # [V] top-left of each dot
    col = np.clip(np.round(size / 2 - 1 + 0.3 * size * np.cos(angle)).astype(int), 0, size - 2)
    for i, tokens in enumerate(content):
        for token in tokens:
            image[i, row[token] : row[token] + 2, col[token] : col[token] + 2] += 0.5
    image += IMAGE_NOISE * noise * rng.standard_normal((n, size, size))
    return image.astype(np.float32)


RENDERERS = {"audio": render_audio, "text": render_text, "image": render_image}


class SyntheticDataset(Dataset):
    """Generated audio / text / image classification task (see the module docstring)."""

    Options = SyntheticOptions

    def __init__(self, options: SyntheticOptions, *, seed: int = 0):
        super().__init__(options, seed=seed)
        self.classes = [f"class{c}" for c in range(options.num_classes)]
        self.modalities = tuple(options.modalities)
        self.num_folds = options.folds
        self._cache: dict[int, Splits] = {}

    @cached_property
    def _parts(self) -> list[tuple[int, int]]:
        """Item ranges: (test, val, train) for one split, or the ``folds`` parts."""
        o = self.options
        if o.folds > 1:
            bounds = np.linspace(0, o.size, o.folds + 1).round().astype(int)
            return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        n_test, n_val = round(o.size * o.test_fraction), round(o.size * o.val_fraction)
        if n_test + n_val >= o.size:
            raise DataError(
                f"The synthetic data set with size={o.size} leaves no item to train on (val_fraction="
                f"{o.val_fraction}, test_fraction={o.test_fraction}). Increase `size` or lower the fractions."
            )
        return [(0, n_test), (n_test, n_test + n_val), (n_test + n_val, o.size)]

    @cached_property
    def _samples(self) -> list[Sample]:
        o = self.options
        # Labels cycle through the classes within each part (stratified), then each part is shuffled.
        rng = _rng(self.seed, 0)
        labels = np.concatenate([rng.permutation(np.arange(b - a) % o.num_classes) for a, b in self._parts])
        intensity = rng.uniform(0.5, 1.5, o.size)
        content = self._content()
        views = {
            m: RENDERERS[m](labels, intensity, content, _rng(self.seed, 1 + KINDS.index(m)), o, o.noise.get(m, 1.0))
            for m in self.modalities
        }
        absent = self._absent()
        return [
            Sample(
                inputs={m: None if absent[i, j] else views[m][i] for j, m in enumerate(self.modalities)},
                label=int(labels[i]),
                meta={"index": i, "intensity": float(intensity[i]), "content": [int(t) for t in content[i]],
                      **({"missing": [m for j, m in enumerate(self.modalities) if absent[i, j]]} if o.missing_rate else {})},
            )
            for i in range(o.size)
        ]

    def _content(self) -> np.ndarray:
        """[size, shared_content] int: each item's distinct content tokens, from a stream of their own."""
        o = self.options
        rng = _rng(self.seed, 50)
        v = content_vocab_size(o.num_classes)
        return np.argsort(rng.random((o.size, v)), axis=1)[:, : o.shared_content]

    def _absent(self) -> np.ndarray:
        """[size, M] bool: which item lacks which modality (all False without missing_rate)."""
        o, mods = self.options, self.modalities
        if not any(o.missing_rate.values()):
            return np.zeros((o.size, len(mods)), dtype=bool)
        rng = _rng(self.seed, 100)
        absent = rng.random((o.size, len(mods))) < np.array([o.missing_rate.get(m, 0.0) for m in mods])
        keep = rng.integers(0, len(mods), o.size)
        none_left = absent.all(1)
        absent[none_left, keep[none_left]] = False
        return absent

    def splits(self, fold: int | None = None) -> Splits:
        """Train / validation / test of ``fold`` (default 0); generated on first call, then cached."""
        fold = 0 if fold is None else fold
        if fold not in range(self.num_folds):
            has = "a single fold" if self.num_folds == 1 else f"{self.num_folds} folds (0 to {self.num_folds - 1})"
            raise DataError(
                f"The synthetic data set has {has}, but fold {fold!r} was asked for. Ask for a fold in range "
                f"(or none), or set the option `folds`."
            )
        if fold not in self._cache:
            parts = [self._samples[a:b] for a, b in self._parts]
            if self.num_folds == 1:
                self._cache[fold] = Splits(train=parts[2], val=parts[1], test=parts[0])
            else:
                n, val = self.num_folds, (fold + 1) % self.num_folds
                train = [s for j in range(n) if j not in (fold, val) for s in parts[j]]
                self._cache[fold] = Splits(train=train, val=parts[val], test=parts[fold])
        return self._cache[fold]


@hookimpl
def register_datasets(register: Register) -> None:
    register("synthetic", SyntheticDataset)

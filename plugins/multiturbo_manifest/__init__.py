"""The ``manifest`` data set: your own data, listed in a CSV or JSONL file.

Each row names one item's inputs and its label::

    wav,transcript,speaker,label
    clips/a.wav,I am fine,spk1,neu
    clips/b.wav,Go away!,spk2,ang

and the options say which column feeds which modality::

    modalities:
      audio: {column: wav, kind: audio}
      text: {column: transcript, kind: text}

Kinds: ``audio`` (a path, read with :func:`multiturbo.audio.load_audio`: a mono
:class:`~multiturbo.audio.Waveform`), ``image`` (a path, read with Pillow and converted to
RGB: grayscale is replicated to 3 channels, palette images are expanded, an alpha channel
is dropped, not composited; a uint8 array [H, W, 3]) and ``text`` (the cell as a str). Paths are relative to the manifest's
directory (absolute paths are kept). Files are read lazily in ``__getitem__``, i.e. in the
DataLoader's workers; that every audio and image file exists is checked when the data set
is built.

Missing values: a modality with ``optional: true`` may be absent from an item: an empty cell
(or a JSON null / absent key) then gives the input ``None`` (for text too: an empty text cell of an
optional modality is missing, not the empty string), and the engine leaves that item out of the
modality's encoder, contrastive terms and head slot (docs/loss.md). Without ``optional`` an empty
(or blank) cell is an error for every kind, text included: it names the rows and the fix. A row
with every modality missing is an error.

Format: ``.jsonl`` / ``.ndjson`` files hold one JSON object per line (blank lines are
skipped); any other suffix is read as CSV with a header row (``format`` overrides the
guess). Rows are numbered by their line in the file, as errors name them.

Splits (exactly one way):

- ``split_column``: each row says ``train``, ``val`` or ``test`` (``validation``,
  ``valid`` and ``dev`` mean ``val``).
- ``fold_column``: folds by value (values sorted; numbers numerically): fold f tests the
  rows whose value is the f-th, validates on the (f + 1)-th (cyclically), trains on the
  rest. ``num_folds`` is the number of values (at least 3).
- otherwise random, reproducible from the constructor's ``seed`` (the config's
  ``data.split_seed``, default 0, the same for every training seed): ``test_fraction`` and
  ``val_fraction`` of the rows, stratified by label; with ``group_column`` (e.g. a
  speaker) whole groups are assigned instead, so no group is in two splits: groups are
  shuffled by the seed, and each joins test (then val) while that brings the split's row
  count closer to its target (a split with a fraction > 0 gets at least one group).

``meta`` holds ``line`` (the row's line in the manifest) and the value of every column
that is not an input or the label (speaker, split...); with an optional modality also
``missing``, the modalities the row lacks.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from multiturbo.audio import Waveform, audio_problems, audio_seconds, load_audio
from multiturbo.dataset import Dataset, DatasetOptions, LazySplit, Sample, Splits
from multiturbo.errors import DataError
from multiturbo.hookspecs import Register, hookimpl
from multiturbo.options import StrictModel
from multiturbo.reader import InputReader
from multiturbo.table import read_manifest

__all__ = ["ManifestDataset", "ManifestOptions", "manifest_split", "ModalitySpec", "load_image"]

Kind = Literal["audio", "text", "image"]
SHOW_MAX = 5  # how many offending rows an error lists
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}


class ModalitySpec(StrictModel):
    column: str = Field(description="The manifest column holding this modality's input.")
    kind: Kind = Field(description="audio / image: a file path; text: the text itself.")
    optional: bool = Field(False, description="Items may lack this modality: an empty cell means missing (input None).")


class ManifestOptions(DatasetOptions):
    path: Path = Field(description="The manifest file (CSV with a header row, or JSONL).")
    modalities: dict[str, ModalitySpec] = Field(min_length=1, description="Modality name -> {column, kind}.")
    label_column: str = Field("label", description="The column holding the class name.")
    classes: list[str] | None = Field(None, min_length=2, description="Class names in label order (default: sorted).")
    split_column: str | None = Field(None, description="A column with train / val / test per row.")
    fold_column: str | None = Field(None, description="A column whose values are the folds.")
    group_column: str | None = Field(None, description="Random splits keep each value of this column in one split.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows (or groups) for validation.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of rows (or groups) for testing.")
    format: Literal["auto", "csv", "jsonl"] = Field("auto", description="auto: by suffix (.jsonl/.ndjson or CSV).")
    bad_items: Literal["error", "drop"] = Field(
        "error", description="error: unusable rows (empty required cells, missing or bad audio files, no modality) stop the "
        "run with one message listing them all; drop: they are left out (and rows repeating an earlier row's inputs), "
        "counted in run.json (dropped_items) and in a warning.")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"classes must not repeat a name, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ManifestOptions":
        if self.split_column and self.fold_column:
            raise ValueError("set at most one of split_column and fold_column")
        if self.group_column and (self.split_column or self.fold_column):
            raise ValueError(
                "group_column applies to random splits only; with split_column or fold_column the splits are "
                "given by that column (remove group_column)"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}"
            )
        return self


def load_image(path: str | Path) -> np.ndarray:
    """An image file as a uint8 array [H, W, 3] (Pillow; L/P/RGBA/... converted to RGB, alpha dropped)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file {path} does not exist. Check the path (relative paths are resolved against the manifest).")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)
    except Exception as exc:  # PIL raises UnidentifiedImageError / OSError / ValueError
        raise DataError(f"Image file {path} cannot be read ({type(exc).__name__}: {exc}). Replace or remove it.") from None


LOADERS = {"audio": load_audio, "image": load_image}


def _load_row(kinds: dict[str, str], r: dict[str, Any]) -> Sample:
    """The sample of one manifest row: audio and image files read, text as given."""
    inputs = {m: LOADERS[kinds[m]](v) if kinds[m] in LOADERS and v is not None else v for m, v in r["inputs"].items()}
    return Sample(inputs=inputs, label=r["label"], meta=r["meta"])


def _row_lengths(kinds: dict[str, str], r: dict[str, Any]) -> dict[str, float]:
    """A row's length per modality without decoding: audio seconds from the file header, text words
    (images have none: they are resized to one shape)."""
    out = {}
    for m, v in r["inputs"].items():
        if v is None:
            continue
        if kinds[m] == "audio":
            out[m] = audio_seconds(v)
        elif kinds[m] == "text":
            out[m] = float(len(str(v).split()))
    return out


def manifest_split(rows: Sequence[dict[str, Any]], kinds: dict[str, str]) -> LazySplit:
    """A lazy split of manifest rows ({"inputs": {modality: path or text}, "label": int, "meta": {...}})."""
    return LazySplit(rows, partial(_load_row, kinds), itemgetter("label"), itemgetter("meta"), partial(_row_lengths, kinds))


def _rows_listing(lines: list[str], total: int) -> str:
    return "; ".join(lines[:SHOW_MAX]) + (f"; ... ({total} in all)" if total > SHOW_MAX else f" ({total} in all)")


def _cell(value: Any) -> str:
    """A cell as text: None -> "", numbers as written (1.0 stays "1.0", 3 stays "3")."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _check_audio_files(rows: list[dict[str, Any]], o: ManifestOptions) -> list[tuple[int, str]]:
    """``(n, "line n: column='value' <problem>")`` for every existing audio file that cannot be read, has
    no samples, is truncated or holds NaN / inf (:func:`multiturbo.audio.audio_problems`)."""
    audio = [m for m, spec in o.modalities.items() if spec.kind == "audio"]
    todo = [(r["meta"]["line"], m, r["inputs"][m]) for r in rows for m in audio if isinstance(r["inputs"][m], Path) and r["inputs"][m].is_file()]
    bad = audio_problems([file for _, _, file in todo], str(o.path))
    return [(line, f"line {line}: {o.modalities[m].column}={str(file)!r} {bad[i]}") for i, (line, m, file) in enumerate(todo) if i in bad]


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


class ManifestDataset(Dataset):
    """Items listed in a CSV / JSONL manifest (see the module docstring)."""

    Options = ManifestOptions

    def __init__(self, options: ManifestOptions, *, seed: int = 0):
        super().__init__(options, seed=seed)
        o = options
        self.path = Path(o.path).expanduser()
        self.modalities = tuple(o.modalities)
        self._kinds = {m: spec.kind for m, spec in o.modalities.items()}
        columns, raw = read_manifest(self.path, o.format)

        wanted = {f"modalities.{m}.column": spec.column for m, spec in o.modalities.items()}
        wanted["label_column"] = o.label_column
        for option in ("split_column", "fold_column", "group_column"):
            if getattr(o, option):
                wanted[option] = getattr(o, option)
        missing = {opt: col for opt, col in wanted.items() if col not in columns}
        if missing:
            named = ", ".join(f"{col!r} (option {opt})" for opt, col in missing.items())
            raise DataError(f"The manifest {self.path} has no column {named}. Its columns are: {columns}.")

        # Labels.
        label_of = [(n, _cell(row.get(o.label_column)).strip()) for n, row in raw]
        blank = [f"line {n}" for n, v in label_of if not v]
        if blank:
            raise DataError(
                f"The manifest {self.path} has rows with an empty label (column {o.label_column!r}): "
                f"{_rows_listing(blank, len(blank))}. Fill in the labels or remove the rows."
            )
        self.classes = list(o.classes) if o.classes is not None else sorted({v for _, v in label_of})
        if o.classes is None and len(self.classes) < 2:
            raise DataError(
                f"The manifest {self.path} has a single label {self.classes}; classification needs at least 2 classes."
            )
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [f"line {n}: {v!r}" for n, v in label_of if v not in index]
        if unknown:
            raise DataError(
                f"The manifest {self.path} has labels outside `classes` {self.classes}: "
                f"{_rows_listing(unknown, len(unknown))}. Add them to `classes` or remove the rows."
            )

        # Inputs; files must exist now, not in the middle of training.
        base = self.path.parent
        input_columns = {spec.column for spec in o.modalities.values()}
        rows, absent, empty = [], [], []
        blank: dict[str, list[int]] = {}  # modality -> lines whose cell of a required modality is empty
        for (n, row), (_, label) in zip(raw, label_of):
            inputs: dict[str, Any] = {}
            for m, spec in o.modalities.items():
                value = _cell(row.get(spec.column))
                if not value.strip():
                    if not spec.optional:
                        blank.setdefault(m, []).append(n)
                    inputs[m] = None  # a missing modality (an error below unless optional)
                elif spec.kind != "text":
                    p = Path(value.strip()).expanduser()
                    file = p if p.is_absolute() else base / p
                    if not file.is_file():
                        absent.append((n, f"line {n}: {spec.column}={value!r}"))
                    inputs[m] = file
                else:
                    inputs[m] = value
            if all(v is None for v in inputs.values()):
                empty.append(n)
            meta = {"line": n, **{k: v for k, v in row.items() if k not in input_columns and k != o.label_column}}
            if any(spec.optional for spec in o.modalities.values()):
                meta["missing"] = [m for m, v in inputs.items() if v is None]
            rows.append({"inputs": inputs, "label": index[label], "meta": meta})
        bad_audio = _check_audio_files(rows, o)
        if o.bad_items == "drop":
            rows = self._drop_bad_rows(rows, blank, absent, bad_audio, empty)
        else:
            self._refuse_bad_rows(blank, absent, bad_audio, empty)
        self.rows = rows
        self.group_key = o.group_column
        self._folds: list[str] = []
        if o.fold_column:
            self._folds = sorted({_cell(r["meta"][o.fold_column]) for r in rows}, key=_sort_key)
            if len(self._folds) < 3:
                raise DataError(
                    f"The fold column {o.fold_column!r} of {self.path} has {len(self._folds)} value(s) "
                    f"{self._folds}; folds need at least 3 (test, validation, train)."
                )
            self.num_folds = len(self._folds)
        self._cache: dict[int, Splits] = {}

    def _refuse_bad_rows(self, blank: dict[str, list[int]], absent: list[tuple[int, str]], bad_audio: list[tuple[int, str]],
                         empty: list[int]) -> None:
        """One DataError listing every unusable row (``bad_items: error``), or nothing when all rows are usable."""
        o, base = self.options, self.path.parent
        problems = []  # every problem of the manifest, in one error
        for m, lines in blank.items():
            problems.append(
                f"empty cells in the column {o.modalities[m].column!r} of the required {o.modalities[m].kind} modality "
                f"{m!r}: {_rows_listing([f'line {n}' for n in lines], len(lines))}. Fill them in, remove the rows, or, if items "
                f"may lack {m!r}, set `optional: true` on it (data.options.modalities.{m}.optional) so an empty cell means the "
                f"item lacks it."
            )
        if absent:
            problems.append(
                f"files that do not exist (paths are relative to {base}): {_rows_listing([a for _, a in absent], len(absent))}. "
                f"Fix the paths or remove the rows (or, for a modality some items lack, set `optional: true` on it and leave its cell empty)."
            )
        if bad_audio:
            problems.append(
                f"audio files that cannot be used: {_rows_listing([b for _, b in bad_audio], len(bad_audio))}. Replace the files or remove the rows."
            )
        if empty:
            problems.append(f"rows with every modality missing: {_rows_listing([f'line {n}' for n in empty], len(empty))}. Remove them.")
        hint = " (Or set `bad_items: drop` in data.options to leave such rows out, counted in run.json.)"
        if len(problems) == 1:
            raise DataError(f"The manifest {self.path} has {problems[0]}{hint}")
        if problems:
            listed = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
            raise DataError(f"The manifest {self.path} has {len(problems)} problems, found before training: {listed}{hint}")

    def _drop_bad_rows(self, rows: list[dict[str, Any]], blank: dict[str, list[int]], absent: list[tuple[int, str]],
                       bad_audio: list[tuple[int, str]], empty: list[int]) -> list[dict[str, Any]]:
        """The usable rows (``bad_items: drop``): the unusable ones and the rows repeating an earlier row's
        inputs left out, each recorded in ``self.dropped_items``; a DataError when none is left."""
        o = self.options
        reasons: dict[int, str] = {}
        for m, lines in blank.items():
            for n in lines:
                reasons.setdefault(n, f"line {n}: empty cell in the column {o.modalities[m].column!r} of the required modality {m!r}")
        for n, text in absent:
            reasons.setdefault(n, f"{text} does not exist")
        for n, text in bad_audio:
            reasons.setdefault(n, text)
        for n in empty:
            reasons.setdefault(n, f"line {n}: every modality missing")
        first: dict[tuple, int] = {}
        for r in rows:
            n = r["meta"]["line"]
            if n in reasons:
                continue
            key = tuple((m, str(v)) for m, v in sorted(r["inputs"].items()))
            if key in first:
                reasons[n] = f"line {n}: the same inputs as line {first[key]}"
            else:
                first[key] = n
        self.dropped_items = [reasons[n] for n in sorted(reasons)]
        kept = [r for r in rows if r["meta"]["line"] not in reasons]
        if not kept:
            raise DataError(f"The manifest {self.path} has no usable row: bad_items: drop left out all {len(rows)} "
                            f"({_rows_listing(self.dropped_items, len(self.dropped_items))}). Fix the manifest.")
        return kept

    # -- splits ------------------------------------------------------------------------------
    def _assign(self, fold: int) -> list[str]:
        """'train' / 'val' / 'test' per row."""
        o, rows = self.options, self.rows
        if o.split_column:
            out, bad = [], []
            for r in rows:
                v = _cell(r["meta"][o.split_column]).strip().lower()
                out.append(SPLIT_NAMES.get(v, ""))
                if v not in SPLIT_NAMES:
                    bad.append(f"line {r['meta']['line']}: {r['meta'][o.split_column]!r}")
            if bad:
                raise DataError(
                    f"The split column {o.split_column!r} of {self.path} must hold train, val or test: "
                    f"{_rows_listing(bad, len(bad))}."
                )
            return out
        if o.fold_column:
            n = len(self._folds)
            test, val = self._folds[fold], self._folds[(fold + 1) % n]
            values = [_cell(r["meta"][o.fold_column]) for r in rows]
            return ["test" if v == test else "val" if v == val else "train" for v in values]
        rng = np.random.default_rng(self.seed)
        out = ["train"] * len(rows)
        if o.group_column:
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(_cell(r["meta"][o.group_column]), []).append(i)
            names = sorted(groups, key=_sort_key)
            order = [names[k] for k in rng.permutation(len(names))]
            n_test, n_val = self._targets(len(rows))
            target, counts = {"test": n_test, "val": n_val}, {"test": 0, "val": 0}

            def takes(split: str, size: int) -> bool:
                """A group joins a split while that brings the split closer to its target (one at least)."""
                t, c = target[split], counts[split]
                return t > 0 and (c == 0 or abs(c + size - t) < abs(c - t))

            for g in order:  # whole groups, in the seed's order: test first, then val; the rest trains
                size = len(groups[g])
                split = "test" if takes("test", size) else "val" if takes("val", size) else "train"
                if split != "train":
                    counts[split] += size
                for i in groups[g]:
                    out[i] = split
        else:
            by_class: dict[int, list[int]] = {}
            for i, r in enumerate(rows):
                by_class.setdefault(r["label"], []).append(i)
            for label in sorted(by_class):
                members = [by_class[label][k] for k in rng.permutation(len(by_class[label]))]
                n_test, n_val = round(len(members) * o.test_fraction), round(len(members) * o.val_fraction)
                for k, i in enumerate(members):
                    out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
        return out

    def _check_leaks(self, assign: list[str], fold: int) -> None:
        """Refuse the same item (rows with the same inputs) in two splits: the test would score training items."""
        where: dict[tuple, list[tuple[int, str]]] = {}
        for r, split in zip(self.rows, assign):
            key = tuple((m, str(v)) for m, v in sorted(r["inputs"].items()))
            where.setdefault(key, []).append((r["meta"]["line"], split))
        leaks = [places for places in where.values() if len({s for _, s in places}) > 1]
        if leaks:
            listed = [" and ".join(f"line {n} ({s})" for n, s in places) for places in leaks]
            raise DataError(
                f"The manifest {self.path} lists the same item (the same inputs) in two splits (fold {fold}): "
                f"{_rows_listing(listed, len(listed))}. Remove the duplicate rows, or give duplicates the same group "
                f"(group_column) so they land in one split."
            )

    def _targets(self, n: int) -> tuple[int, int]:
        o = self.options
        n_test = max(1, round(n * o.test_fraction)) if o.test_fraction > 0 else 0
        n_val = max(1, round(n * o.val_fraction)) if o.val_fraction > 0 else 0
        return n_test, n_val

    def splits(self, fold: int | None = None) -> Splits:
        """Train / validation / test (of ``fold`` when ``fold_column`` is set; default 0); cached."""
        fold = 0 if fold is None else fold
        try:
            f = operator.index(fold)
        except TypeError:
            f = -1
        if not 0 <= f < self.num_folds:
            where = f"values of {self.options.fold_column!r}: {self._folds}" if self._folds else "no fold_column"
            raise DataError(
                f"Manifest fold {fold!r} does not exist: the data set has {self.num_folds} fold(s) ({where}). "
                f"Ask for a fold from 0 to {self.num_folds - 1}."
            )
        if f not in self._cache:
            assign = self._assign(f)
            self._check_leaks(assign, f)
            parts = {s: manifest_split([r for r, a in zip(self.rows, assign) if a == s], self._kinds) for s in ("train", "val", "test")}
            if len(parts["train"]) == 0:
                raise DataError(
                    f"The manifest {self.path} leaves no row to train on (fold {f}). Lower val_fraction / "
                    f"test_fraction, or add rows (or groups)."
                )
            self._cache[f] = Splits(train=parts["train"], val=parts["val"], test=parts["test"])
        return self._cache[f]


@hookimpl
def register_datasets(register: Register) -> None:
    register("manifest", ManifestDataset)


# -- reading inputs for prediction (multiturbo predict / evaluate / embed) -------------------------
def _mono(samples: Any) -> np.ndarray:
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().cpu().numpy()
    a = np.asarray(samples, dtype=np.float32)
    if a.ndim == 2:  # [T, C] or [C, T]: average the (shorter) channel axis
        a = a.mean(axis=1 if a.shape[0] >= a.shape[1] else 0)
    return a


class AudioReader(InputReader):
    """Audio: a file path (mono), a ``(samples, sample_rate)`` pair, or a Waveform; the encoder
    resamples to its own rate."""

    name_hints = ("audio", "speech", "wav", "voice", "acoustic", "sound")
    files = True

    def read(self, value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2 and np.isscalar(value[1]):
            return Waveform(_mono(value[0]), int(value[1]))
        return load_audio(value) if isinstance(value, Path) else value


class ImageReader(InputReader):
    """Images: a file path (read as RGB) or a uint8 array [H, W, 3]."""

    name_hints = ("image", "vision", "visual", "video", "face", "img")
    files = True

    def read(self, value: Any) -> Any:
        return load_image(value) if isinstance(value, Path) else value


class TextReader(InputReader):
    """Text: the string itself (the empty string is valid text)."""

    name_hints = ("text", "transcript", "lexical", "caption", "sentence")


@hookimpl
def register_input_readers(register: Register) -> None:
    register("audio", AudioReader)
    register("text", TextReader)
    register("image", ImageReader)

"""The ``hf_datasets`` data set: a Hugging Face ``datasets`` data set on disk.

Either a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(``builder`` unset), or local files read by one of ``datasets``' builders (``builder``:
``audiofolder``, ``imagefolder``, ``csv``, ``json``, ``parquet``; ``path`` is the directory, or
the file for csv / json / parquet). Nothing is downloaded.

The options say which column feeds which modality, as the manifest's do::

    modalities:
      audio: audio                                   # column name; kind from its feature
      text: {column: transcription, optional: true}

Kinds come from the column's feature: ``Audio`` -> audio, ``Image`` -> image, a string
``Value`` -> text; ``kind: audio`` / ``image`` on a string column reads its cells as file
paths (relative ones against the data set's directory). Audio and images are never decoded by
``datasets`` (its audio decoding needs torchcodec and FFmpeg): the columns are cast to
``Audio(decode=False)`` / ``Image(decode=False)``, and each item's bytes (or file) are read in
``__getitem__`` (DataLoader workers) with :func:`multiturbo.audio.load_audio` (soundfile: a mono
Waveform at the file's rate, which each encoder resamples to its own with soxr) and
:func:`multiturbo_manifest.load_image` (Pillow, RGB). The table stays memory-mapped; items hold
only their row's position.

Labels: a ``ClassLabel`` column gives the classes, its names in order; any other column gives the
sorted distinct values (numbers numerically); ``classes`` overrides both, as in the manifest.

Splits: a ``DatasetDict`` whose splits read (``hf_splits``, default all) are train, validation
(or val / valid / dev) and test is split as it is (``use_hf_splits``, default: exactly then);
otherwise the rows of the splits read are pooled and split as the manifest splits
(``split_column``, ``fold_column``, or random by ``data.split_seed``, stratified or by
``group_column``): :class:`multiturbo_manifest.TableDataset`.

The data are checked when the data set is built, every problem in one error (the manifest's
checks): an empty cell of a required modality, a file that does not exist, audio that cannot be
read, has no samples, is truncated or holds NaN / inf, a row with every modality missing, empty
labels; the same item in two splits when the splits are made.

``meta`` holds ``index`` (the row's position among the rows read), with a ``DatasetDict`` also
``hf_split`` and ``hf_index`` (its split and its row there), and the value of every scalar column
that is not an input or the label (a ``ClassLabel`` as its name); with an optional modality also
``missing``.
"""

from __future__ import annotations

import hashlib
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from multiturbo.audio import audio_problems, audio_seconds, load_audio
from multiturbo.dataset import LazySplit, Sample
from multiturbo.errors import DataError
from multiturbo.hookspecs import Register, hookimpl
from multiturbo.options import StrictModel
from multiturbo_manifest import (
    SPLIT_NAMES,
    TableDataset,
    TableOptions,
    _cell,
    _rows_listing,
    _sort_key,
    blank_cells_problem,
    load_image,
)

__all__ = ["HFDatasetsDataset", "HFDatasetsOptions", "HFModalitySpec"]

Kind = Literal["audio", "text", "image"]
Builder = Literal["audiofolder", "imagefolder", "csv", "json", "parquet"]
INSTALL = 'pip install "multiturbo[hf]"'
WHAT = {"audio": "audio (or a column of file paths)", "image": "an image (or a column of file paths)", "text": "text"}


class HFModalitySpec(StrictModel):
    column: str = Field(description="The column holding this modality's input.")
    kind: Kind | None = Field(None, description="None: from the column's feature (Audio, Image, string); audio / image on a string column: file paths.")
    optional: bool = Field(False, description="Items may lack this modality: an empty cell means missing (input None).")


class HFDatasetsOptions(TableOptions):
    path: Path = Field(description="A directory saved with save_to_disk, or the directory / file that `builder` reads.")
    builder: Builder | None = Field(None, description="None: `path` was saved with save_to_disk; else the datasets builder that reads the local files.")
    modalities: dict[str, HFModalitySpec | str] = Field(min_length=1, description="Modality name -> column, or {column, kind, optional}.")
    hf_splits: list[str] | None = Field(None, min_length=1, description="The data set's own splits to read (default: all).")
    use_hf_splits: bool | None = Field(
        None, description="Use the data set's train / validation / test splits as the run's splits; None: when the splits read are exactly these and no split, fold or group column is set.",
    )
    cache_dir: Path | None = Field(None, description="Where builders keep their Arrow cache (default: datasets' own, ~/.cache/huggingface/datasets).")

    @model_validator(mode="after")
    def _hf_splits_or_columns(self) -> "HFDatasetsOptions":
        if self.use_hf_splits and (self.split_column or self.fold_column or self.group_column):
            raise ValueError("use_hf_splits takes the splits from the data set: remove split_column / fold_column / group_column, or set use_hf_splits: false")
        return self

    def specs(self) -> dict[str, HFModalitySpec]:
        """Each modality's spec, a bare column name made a spec."""
        return {m: HFModalitySpec(column=s) if isinstance(s, str) else s for m, s in self.modalities.items()}


def _datasets():
    """The ``datasets`` package, imported on first use (it takes about a second)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"The hf_datasets data set needs the `datasets` package: {INSTALL}.") from None
    return datasets


def _has_torchcodec() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchcodec") is not None


def _audiofolder(root: Path, datasets: Any, cache_dir: str | None) -> Any:
    """The ``audiofolder`` layout without torchcodec (datasets' builder needs it to write its Audio
    column): a ``metadata.csv`` / ``metadata.jsonl`` at the root with a ``file_name`` column (paths
    relative to the root) and any other columns, or audio files in one folder per class (the
    folder's name is the ``label``). One split, ``train``; the audio column is ``audio``."""
    from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder

    metadata = [root / n for n in ("metadata.csv", "metadata.jsonl") if (root / n).is_file()]
    if metadata:
        loader = "csv" if metadata[0].suffix == ".csv" else "json"
        table = datasets.load_dataset(loader, data_files=str(metadata[0]), split="train", cache_dir=cache_dir)
        if "file_name" not in table.column_names:
            raise DataError(f"The audiofolder metadata {metadata[0]} has no column 'file_name' (its columns are: {table.column_names}). Name the audio files' column file_name.")
        files = [str(root / f) if f else None for f in table["file_name"]]
        table = table.remove_columns("file_name").add_column("audio", files)
    else:
        suffixes = {e.lower() for e in AudioFolder.EXTENSIONS}
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"The audiofolder {root} holds no audio file and no metadata.csv / metadata.jsonl.")
        labels = [p.parent.name for p in found]
        table = datasets.Dataset.from_dict({"audio": [str(p) for p in found], "label": labels})
        table = table.cast_column("label", datasets.ClassLabel(names=sorted(set(labels))))
    return datasets.DatasetDict({"train": table.cast_column("audio", datasets.Audio(decode=False))})


def open_data(o: HFDatasetsOptions) -> dict[str, Any]:
    """The data set's splits, {name: datasets.Dataset} ({"": the data set} when it is not a DatasetDict)."""
    datasets = _datasets()
    path = Path(o.path).expanduser()
    cache = None if o.cache_dir is None else str(Path(o.cache_dir).expanduser())
    if not path.exists():
        raise DataError(f"The data set path {path} does not exist. Set data.options.path to a directory saved with save_to_disk, or to the files that `builder` reads.")
    if o.builder is None:
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise DataError(
                f"{path} is not a data set saved with save_to_disk ({' '.join(str(exc).split())[:200]}). For a folder of audio or "
                f"image files, or CSV / JSON / Parquet files, set data.options.builder (audiofolder, imagefolder, csv, json, parquet)."
            ) from None
    elif o.builder == "audiofolder" and not _has_torchcodec() and path.is_dir():
        loaded = _audiofolder(path, datasets, cache)
    else:
        where = {"data_dir": str(path)} if path.is_dir() else {"data_files": str(path)}
        try:
            loaded = datasets.load_dataset(o.builder, **where, cache_dir=cache)
        except Exception as exc:  # noqa: BLE001 - datasets raises DatasetGenerationError, ValueError, FileNotFoundError, ...
            cause = exc.__cause__ or exc
            raise DataError(
                f"datasets' {o.builder} builder could not read {path} ({type(cause).__name__}: {' '.join(str(cause).split())[:300]}). "
                f"Check the files, or the builder."
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"": loaded}


def _kind(feature: Any, datasets: Any) -> str | None:
    """The kind a column's feature holds: Audio, Image, string -> audio, image, text; else None."""
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    return None


def _media(cell: Any, base: Path) -> bytes | Path | None:
    """An audio / image cell as its bytes or its file (a relative path against ``base``); None: missing."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        cell = cell.get("path")
    if cell is None or not str(cell).strip():
        return None
    p = Path(str(cell).strip()).expanduser()
    return p if p.is_absolute() else base / p


def row_name(meta: dict[str, Any]) -> str:
    """How errors name a row: ``row 3``, or ``validation row 3`` in a DatasetDict."""
    return f"{meta['hf_split']} row {meta['hf_index']}" if "hf_split" in meta else f"row {meta['index']}"


class RowLoader:
    """Loads one row's sample from the (memory-mapped) tables: picklable, for DataLoader workers."""

    def __init__(self, tables: dict[str, Any], specs: dict[str, tuple[str, str]], base: Path):
        self.tables, self.specs, self.base = tables, specs, base
        # train.audio_cache: disk keys an item by its loader's name and its record, whose inputs identify
        # every input (the text, the sha1 of embedded bytes, or the file, whose size and mtime it adds).
        self.__qualname__ = type(self).__qualname__

    def __call__(self, r: dict[str, Any]) -> Sample:
        split, i = r["at"]
        row = self.tables[split][i]
        inputs: dict[str, Any] = {}
        for m, (column, kind) in self.specs.items():
            if r["inputs"][m] is None:
                inputs[m] = None
            elif kind == "text":
                inputs[m] = row[column]
            else:
                source = _media(row[column], self.base)
                inputs[m] = (load_audio if kind == "audio" else load_image)(source, name=f"{row_name(r['meta'])} (column {column!r})")
        return Sample(inputs=inputs, label=r["label"], meta=r["meta"])


class HFDatasetsDataset(TableDataset):
    """A Hugging Face ``datasets`` data set on disk (save_to_disk, or local files through a builder)."""

    Options = HFDatasetsOptions
    noun = "data set"

    def __init__(self, options: HFDatasetsOptions, *, seed: int = 0):
        super().__init__(options, seed=seed)
        o = options
        datasets = _datasets()
        self.path = Path(o.path).expanduser()
        self.source = str(self.path)
        base = self.path if self.path.is_dir() else self.path.parent
        specs = o.specs()
        self.modalities = tuple(specs)
        tables = open_data(o)
        is_dict = "" not in tables
        names = list(tables) if o.hf_splits is None else o.hf_splits
        unknown = [n for n in names if n not in tables]
        if unknown or not is_dict and o.hf_splits is not None:
            raise DataError(f"The data set {self.path} has no split {unknown or o.hf_splits} (option hf_splits); its splits are: {[n for n in tables if n] or 'none (a single Dataset)'}.")
        tables = {n: tables[n] for n in names}

        # Columns and kinds (from the first split read; every split must have the columns).
        wanted = {f"modalities.{m}.column": spec.column for m, spec in specs.items()}
        wanted["label_column"] = o.label_column
        for option in ("split_column", "fold_column", "group_column"):
            if getattr(o, option):
                wanted[option] = getattr(o, option)
        for n, t in tables.items():
            missing = {opt: col for opt, col in wanted.items() if col not in t.column_names}
            if missing:
                named = ", ".join(f"{col!r} (option {opt})" for opt, col in missing.items())
                of = f" (split {n!r})" if n else ""
                raise DataError(f"The data set {self.path}{of} has no column {named}. Its columns are: {t.column_names}.")
        first = tables[names[0]]
        if not isinstance(first.features[o.label_column], (datasets.Value, datasets.ClassLabel)):
            raise DataError(f"The label column {o.label_column!r} of {self.path} holds {first.features[o.label_column]}, not class names or numbers. Set label_column.")
        self._kinds: dict[str, str] = {}
        for m, spec in specs.items():
            feature = first.features[spec.column]
            found = _kind(feature, datasets)
            kind = spec.kind or found
            if kind is None or not (found == kind or (found == "text" and kind in ("audio", "image"))):  # paths in a string column
                raise DataError(
                    f"The column {spec.column!r} of {self.path} (modality {m!r}) holds {feature}, which is not "
                    f"{WHAT.get(kind, 'audio, an image or text')}. Map the modality to another column, or set its kind "
                    f"(data.options.modalities.{m}.kind: audio or image for a column of file paths)."
                )
            self._kinds[m] = kind
        media = {spec.column: datasets.Audio(decode=False) if self._kinds[m] == "audio" else datasets.Image(decode=False)
                 for m, spec in specs.items() if isinstance(first.features[spec.column], (datasets.Audio, datasets.Image))}
        for n, t in tables.items():
            for column, feature in media.items():
                t = t.cast_column(column, feature)
            tables[n] = t

        # Use the data set's own splits?
        roles = {n: SPLIT_NAMES.get(n.lower()) for n in names}
        use = o.use_hf_splits
        if use is None:
            use = is_dict and not (o.split_column or o.fold_column or o.group_column) and set(roles.values()) == {"train", "val", "test"}
        if use and (not is_dict or None in roles.values()):
            raise DataError(
                f"use_hf_splits needs a DatasetDict whose splits read are train, validation (val, valid, dev) and test; "
                f"{self.path} has {[n for n in names if n] or 'a single Dataset'}. Set hf_splits, or use_hf_splits: false to split the rows."
            )

        # Rows: labels, meta, and every input checked now, not in the middle of training.
        inputs_of = {spec.column for spec in specs.values()}
        optional = any(spec.optional for spec in specs.values())
        rows: list[dict[str, Any]] = []
        labels: list[tuple[str, str]] = []
        default_classes = None
        blank: dict[str, list[str]] = {}
        absent, bad_audio, empty = [], [], []
        bad: dict[int, str] = {}  # row position -> why the row cannot be used (bad_items: drop)
        audio: list[tuple[int, str, str, Path | bytes]] = []  # (row position, modality, "row: column=source", source) to check
        for n, t in tables.items():
            feats = t.features
            scalar = [c for c in t.column_names if c not in inputs_of and c != o.label_column and isinstance(feats[c], (datasets.Value, datasets.ClassLabel))]
            values = t.select_columns([*scalar, o.label_column]).to_dict()
            label_feature = feats[o.label_column]
            if isinstance(label_feature, datasets.ClassLabel) and default_classes is None:
                default_classes = list(label_feature.names)
            start = len(rows)
            for i in range(len(t)):
                meta: dict[str, Any] = {"index": start + i}
                if is_dict:
                    meta.update(hf_split=n, hf_index=i)
                for c in scalar:
                    v = values[c][i]
                    meta.setdefault(c, feats[c].int2str(v) if isinstance(feats[c], datasets.ClassLabel) and v is not None and v >= 0 else v)
                raw = values[o.label_column][i]
                if isinstance(label_feature, datasets.ClassLabel):
                    label = label_feature.int2str(raw) if raw is not None and raw >= 0 else ""
                else:
                    label = _cell(raw).strip()
                labels.append((row_name(meta), label))
                rows.append({"inputs": {}, "label": -1, "meta": meta, "at": (n, i), "lengths": {}})
            for m, spec in specs.items():
                kind = self._kinds[m]
                for k, cell in enumerate(_column(t, spec.column)):
                    r = rows[start + k]
                    name = row_name(r["meta"])
                    if kind == "text":
                        value = cell if isinstance(cell, str) and cell.strip() else None
                        if value is not None:
                            r["lengths"][m] = float(len(value.split()))
                    else:
                        source = _media(cell, base)
                        value = source
                        if isinstance(source, bytes):
                            value = "sha1:" + hashlib.sha1(source).hexdigest()  # identifies the item, for the leak check
                        elif source is not None:
                            if not source.is_file():
                                absent.append(f"{name}: {spec.column}={str(source)!r}")
                                bad.setdefault(start + k, f"{name}: {spec.column}={str(source)!r} does not exist")
                            value = source  # a Path: the audio cache fingerprints the file
                        if kind == "audio" and source is not None and (isinstance(source, bytes) or source.is_file()):
                            audio.append((start + k, m, f"{name}: {spec.column}=" + ("its bytes" if isinstance(source, bytes) else repr(str(source))), source))
                    if value is None and not spec.optional:
                        blank.setdefault(m, []).append(name)
                        bad.setdefault(start + k, f"{name}: empty cell in the column {spec.column!r} of the required modality {m!r}")
                    r["inputs"][m] = value
        problem_of = audio_problems([source for *_, source in audio], str(self.path))  # every audio item, progress on stderr
        for k, (i, m, shown, source) in enumerate(audio):
            if k in problem_of:
                bad_audio.append(f"{shown} {problem_of[k]}")
                bad.setdefault(i, bad_audio[-1])
            else:
                rows[i]["lengths"][m] = audio_seconds(source)
        for i, r in enumerate(rows):
            if all(v is None for v in r["inputs"].values()):
                empty.append(row_name(r["meta"]))
                bad.setdefault(i, f"{row_name(r['meta'])}: every modality missing")
            if optional:
                r["meta"]["missing"] = [m for m, v in r["inputs"].items() if v is None]
        if default_classes is None:
            default_classes = sorted({v for _, v in labels if v}, key=_sort_key)
        for r, label in zip(rows, self._label_indices(labels, default_classes)):
            r["label"] = label
        problems = [blank_cells_problem(specs[m].column, self._kinds[m], m, where) for m, where in blank.items()]
        if absent:
            problems.append(
                f"files that do not exist (relative paths are relative to {base}): {_rows_listing(absent, len(absent))}. Fix the "
                f"paths or remove the rows (or, for a modality some items lack, set `optional: true` on it and leave its cell empty)."
            )
        if bad_audio:
            problems.append(f"audio that cannot be used: {_rows_listing(bad_audio, len(bad_audio))}. Replace it or remove the rows.")
        if empty:
            problems.append(f"rows with every modality missing: {_rows_listing(empty, len(empty))}. Remove them.")
        self.rows = self._keep_usable(rows, problems, bad)
        self._loader = RowLoader({n: t.select_columns(sorted(inputs_of)) for n, t in tables.items()},
                                 {m: (spec.column, self._kinds[m]) for m, spec in specs.items()}, base)
        self.split_key = "hf_split" if use else o.split_column
        self.fold_key, self.group_key = o.fold_column, o.group_column
        self._set_folds()

    def _row_name(self, row: dict[str, Any]) -> str:
        return row_name(row["meta"])

    def _make_split(self, rows: list[dict[str, Any]]) -> LazySplit:
        return LazySplit(rows, self._loader, itemgetter("label"), itemgetter("meta"), itemgetter("lengths"))


def _column(table: Any, column: str, batch: int = 64):
    """A column's cells, read a batch at a time (audio and image bytes are not all held at once)."""
    part = table.select_columns([column])
    for start in range(0, len(part), batch):
        yield from part[start:start + batch][column]


@hookimpl
def register_datasets(register: Register) -> None:
    register("hf_datasets", HFDatasetsDataset)

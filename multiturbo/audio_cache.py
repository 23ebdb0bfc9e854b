"""A cache of decoded and resampled audio, so that epochs after the first neither read audio
files nor run the resampler (``train.audio_cache``).

:func:`cache_splits` wraps each split of a run in a :class:`CachedAudioSplit`. For every item it
replaces each :class:`~multiturbo.audio.Waveform` input of an audio modality by
``Waveform(to_rate(w, rate), rate)``, where ``rate`` is the modality's encoder's
``input_sample_rate`` (:class:`multiturbo.encoder.Encoder`). The encoder's own ``to_rate`` is then
a no-op, so a cached item gives the encoder exactly (bit for bit) the array it would have computed.
Inputs that are bare arrays (already at the encoder's rate, e.g. the synthetic data set) are left
as they are: there is nothing to decode or resample.

``memory``
    Samples are kept in a dict of the process that reads them. With ``train.num_workers`` 0 that
    is the main process and every item is decoded once per process: items of a
    :class:`~multiturbo.dataset.LazySplit` whose records can be keyed (as for ``disk`` below) go
    into one process-wide dict under their entry key, so the runs of one ``compare`` / ``cv`` /
    ``tune`` process (each builds its data set again) share them; other splits keep a dict of their
    own. :func:`clear_memory_cache` empties the process-wide dict. With DataLoader workers each
    worker (they persist across epochs) keeps its own copy of the items it was given: a shuffled
    training split reaches full hit rate only after every worker has seen every item, and memory
    use is up to num_workers copies of the decoded audio (float32: 4 bytes per sample, 230 MB per
    hour at 16 kHz, per copy).

``disk``
    One file per item, ``<dir>/<k[:2]>/<k>.f32``: a magic line, the length of a JSON header
    (8 bytes), the header (rates and sample counts, the other inputs, a CRC-32 of the samples),
    then the float32 samples at the encoder rates. Reading an entry is one read into a buffer
    the arrays view (a .npz took 0.75 ms per 3 s item, this 0.43 ms, decoding the 44.1 kHz wav
    1.1 ms before resampling). It is written to a temporary file and moved into place with
    ``os.replace``, so concurrent workers and processes (torchrun ranks, runs in parallel) never
    see half a file. The key ``k`` is a SHA-256 of: the format version, the soxr and libsndfile
    versions, the split's load function (with its arguments) and the item's record, in which every
    path to an existing file is replaced by (absolute path, size, mtime in ns), and the target
    rate of each audio modality. A changed file (size or mtime) therefore gets a new entry, and
    entries are shared by every run, fold and method that reads the same files at the same rates.
    Nothing is ever evicted: delete the directory to reclaim the space. An entry that cannot be
    read (truncated, corrupt) is recomputed and rewritten, with a warning. Writes that fail
    (read-only directory, disk full) warn once and the run goes on uncached.

    On a hit the item is rebuilt without calling the data set's loader, so no file is opened but
    the entry: the audio comes from the entry, the other inputs from its JSON header, the label
    and meta from the split (:class:`~multiturbo.dataset.LazySplit` knows them without loading).
    That needs the other inputs to be JSON values (str, None, numbers, bool: text and missing
    modalities); when an item has another input (an image array, say) the entry holds its audio
    only, and a hit loads the item (decoding its audio again) and skips the resampling only.
    Disk mode needs a LazySplit whose records can be keyed (dataclasses, dicts, lists, paths,
    strings, numbers); any other split (a list of samples already in memory, records of other
    types) gets the memory cache instead, with a warning when it is a LazySplit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import stat
import tempfile
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
import soxr

from .audio import Waveform, to_rate
from .dataset import LazySplit, Sample, Splits

CacheMode = Literal["off", "memory", "disk"]
FORMAT_VERSION = 1
MAGIC = b"multiturbo-audio-cache\n"
SUFFIX = ".f32"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/multiturbo/audio`` (``~/.cache/multiturbo/audio`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "multiturbo" / "audio"


def encoder_rates(encoders: Mapping[str, Any]) -> dict[str, int]:
    """{modality: input_sample_rate} of the encoders that declare one (the audio encoders)."""
    rates = {}
    for m, enc in encoders.items():
        rate = getattr(enc, "input_sample_rate", None)
        if rate is not None:
            rates[m] = int(rate)
    return rates


def cache_splits(splits: Splits, encoders: Mapping[str, Any], mode: CacheMode, directory: str | Path | None = None) -> Splits:
    """``splits`` with each split wrapped in a :class:`CachedAudioSplit`; unchanged when ``mode``
    is ``off`` or no encoder declares an ``input_sample_rate``."""
    rates = encoder_rates(encoders)
    if mode == "off" or not rates:
        return splits
    wrap = functools.partial(CachedAudioSplit, rates=rates, mode=mode, directory=directory)
    return Splits(train=wrap(splits.train), val=wrap(splits.val), test=wrap(splits.test))


class _Unkeyable(Exception):
    pass


def _canon(value: Any, paths: list[Path] | None = None) -> Any:
    """A JSON-able, deterministic form of a record. With ``paths``, each path becomes
    ``["path", n]`` and is appended to ``paths`` (its file is fingerprinted by :func:`_file_state`
    at each access); without, paths are kept as absolute strings."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        p = Path(value).expanduser().absolute()
        if paths is None:
            return ["path", str(p)]
        paths.append(p)
        return ["path", len(paths) - 1]
    if isinstance(value, enum.Enum):
        return ["enum", type(value).__qualname__, _canon(value.value, paths)]
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ["dataclass", _name(type(value)), [[f.name, _canon(getattr(value, f.name), paths)] for f in dataclasses.fields(value)]]
    if isinstance(value, Mapping):
        return ["map", sorted(([_canon(k, paths), _canon(v, paths)] for k, v in value.items()), key=json.dumps)]
    if isinstance(value, (list, tuple)):
        return [_canon(v, paths) for v in value]
    if isinstance(value, (set, frozenset)):
        return ["set", sorted((_canon(v, paths) for v in value), key=json.dumps)]
    if isinstance(value, functools.partial):
        return ["partial", _canon(value.func, paths), _canon(value.args, paths), _canon(value.keywords, paths)]
    if callable(value) and hasattr(value, "__qualname__") and "<" not in value.__qualname__:
        return ["callable", _name(value)]
    raise _Unkeyable(type(value).__name__)


def _file_state(p: Path) -> list:
    """(path, size, mtime_ns) of a file; the path alone for anything else."""
    try:
        st = p.stat()
    except OSError:
        return [str(p)]
    return [str(p), st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else [str(p)]


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


@functools.cache
def _library_versions() -> list[str]:
    return [getattr(soxr, "__version__", "?"), getattr(soundfile, "__libsndfile_version__", "?")]


def _is_json_value(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and np.isfinite(v))


_PROCESS_MEMORY: dict[str, Sample] = {}  # memory mode, keyed items: shared by every run of the process (compare, cv, tune)


def clear_memory_cache() -> None:
    """Forget every item of the process-wide memory cache (``train.audio_cache: memory``)."""
    _PROCESS_MEMORY.clear()


class CachedAudioSplit(Sequence[Sample]):
    """A split whose audio inputs come back already at their encoders' rates, cached in
    memory or on disk (see the module docstring). ``rates``: {modality: encoder rate}.

    ``stats`` counts, in this process: ``hits`` (items served without the data set's loader),
    ``partial_hits`` (loaded, resampling skipped), ``misses`` (decoded and resampled) and
    ``recomputed`` (unreadable entries replaced)."""

    def __init__(self, split: Sequence[Sample], *, rates: Mapping[str, int], mode: CacheMode, directory: str | Path | None = None):
        if mode not in ("memory", "disk"):
            raise ValueError(f"mode must be 'memory' or 'disk', got {mode!r}")
        self.split = split
        self.rates = dict(rates)
        self.mode = mode
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self._memory: dict[int, Sample] = {}
        self._records: dict[int, tuple[str | None, list[Path]]] = {}  # disk: item -> (record JSON, its paths)
        self._write_failed = self._warned_unkeyable = False
        self.stats = {"hits": 0, "partial_hits": 0, "misses": 0, "recomputed": 0}
        self._prefix: str | None = None  # with it, items have keys: disk entries, or the process-wide memory cache
        if isinstance(split, LazySplit):  # a split in memory has nothing to decode: per-split memory cache
            try:
                self._prefix = json.dumps([FORMAT_VERSION, _library_versions(), _canon(split._load), sorted(self.rates.items())])
            except _Unkeyable as exc:
                if mode == "disk":
                    warnings.warn(f"train.audio_cache=disk: the split's load function cannot be keyed ({exc}); using the memory cache for it.", stacklevel=2)

    # passthroughs that loaders and samplers may use
    @property
    def labels(self):
        return self.split.labels

    @property
    def meta(self):
        return self.split.meta

    def __len__(self) -> int:
        return len(self.split)

    def __repr__(self) -> str:
        return f"CachedAudioSplit({self.split!r}, mode={self.mode!r}, rates={self.rates})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memory": {}}  # workers start empty rather than copying the parent's cache

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, IndexError
        if self._prefix is not None and self.mode == "disk":
            return self._disk_item(i)
        sample = self._memory.get(i)  # this split's own: no file is looked at again
        if sample is None:
            key = self._key(i) if self._prefix is not None else None  # the process-wide entry (the item's files stat'ed once)
            sample = _PROCESS_MEMORY.get(key) if key is not None else None
            if sample is None:
                sample = self._convert(self.split[i])
                self.stats["misses"] += 1
                if key is not None:
                    _PROCESS_MEMORY[key] = sample
            else:
                self.stats["hits"] += 1
            self._memory[i] = sample
        else:
            self.stats["hits"] += 1
        return sample

    # -- conversion ----------------------------------------------------------------------
    def _convert(self, sample: Sample) -> Sample:
        inputs = dict(sample.inputs)
        changed = False
        for m, rate in self.rates.items():
            v = inputs.get(m)
            if isinstance(v, Waveform):
                inputs[m] = Waveform(to_rate(v, rate), rate)
                changed = True
        return dataclasses.replace(sample, inputs=inputs) if changed else sample

    # -- disk ----------------------------------------------------------------------------
    def _key(self, i: int) -> str | None:
        """The entry key of item i: its record (memoised) with the current state of its files."""
        known = self._records.get(i)
        if known is None:
            paths: list[Path] = []
            try:
                record = json.dumps(_canon(self.split._records[i], paths))  # type: ignore[attr-defined]
            except _Unkeyable:
                record = None
            known = self._records[i] = (record, paths)
        record, paths = known
        if record is None:
            return None
        text = json.dumps([self._prefix, record, [_file_state(p) for p in paths]])
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def _disk_item(self, i: int) -> Sample:
        key = self._key(i)
        if key is None:  # this record cannot be keyed: per-process memory instead
            if not self._warned_unkeyable:
                self._warned_unkeyable = True
                warnings.warn("train.audio_cache=disk: some records of this split cannot be keyed (types other than dataclasses, "
                              "dicts, lists, paths, strings, numbers); they use the memory cache.", stacklevel=3)
            sample = self._memory.get(i)
            if sample is None:
                sample = self._memory[i] = self._convert(self.split[i])
            return sample
        path = self._path(key)
        entry = None
        try:
            entry = self._read(path)
        except (FileNotFoundError, NotADirectoryError):
            pass  # not cached yet
        except Exception as exc:  # noqa: BLE001 - any damage to an entry means: compute it again
            warnings.warn(f"audio cache entry {path} cannot be read ({type(exc).__name__}: {exc}); recomputing it.", stacklevel=2)
            self.stats["recomputed"] += 1
        if entry is not None:
            audio, header = entry
            if header["complete"]:
                inputs = {**header["inputs"], **audio}
                self.stats["hits"] += 1
                return Sample(inputs={m: inputs[m] for m in header["order"]}, label=self.split.labels[i], meta=self.split.meta[i])  # type: ignore[attr-defined]
            sample = self.split[i]  # other inputs are not JSON values: load the item, keep the resampled audio
            self.stats["partial_hits"] += 1
            return dataclasses.replace(sample, inputs={**sample.inputs, **audio})
        sample = self._convert(self.split[i])
        self.stats["misses"] += 1
        self._write(path, sample)
        return sample

    def _read(self, path: Path) -> tuple[dict[str, Waveform], dict]:
        """The audio and the header of an entry; FileNotFoundError when absent, another error when damaged."""
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)  # writable, like a freshly decoded array
            if f.readinto(data) != len(data):
                raise ValueError("the file changed while it was read")
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError("not an audio cache entry")
        n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
        body = len(MAGIC) + 8 + n
        header = json.loads(data[len(MAGIC) + 8 : body].decode())
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {header.get('version')!r}, expected {FORMAT_VERSION}")
        if len(data) != body + 4 * sum(size for _, size in header["audio"].values()):
            raise ValueError(f"{len(data)} bytes, the header describes another size (truncated?)")
        if zlib.crc32(memoryview(data)[body:]) != header["crc32"]:
            raise ValueError("the samples do not match their checksum")
        audio, offset = {}, body
        for m, (rate, size) in header["audio"].items():
            if self.rates.get(m) != rate:
                raise ValueError(f"modality {m!r} stored at {rate} Hz, wanted {self.rates.get(m)}")
            audio[m] = Waveform(np.frombuffer(data, dtype="<f4", count=size, offset=offset), rate)
            offset += 4 * size
        if set(header["order"]) != set(header["inputs"]) | set(audio) and header["complete"]:
            raise ValueError("the header's inputs do not match its modalities")
        return audio, header

    def _write(self, path: Path, sample: Sample) -> None:
        audio = {m: v for m, v in sample.inputs.items() if m in self.rates and isinstance(v, Waveform)}
        if not audio or self._write_failed:
            return  # nothing decoded to keep (bare arrays), or the directory is not writable
        others = {m: v for m, v in sample.inputs.items() if m not in audio}
        complete = all(_is_json_value(v) for v in others.values())
        arrays = [np.ascontiguousarray(w.samples, dtype="<f4").reshape(-1) for w in audio.values()]
        crc = 0
        for a in arrays:
            crc = zlib.crc32(a.data, crc)
        header = json.dumps({
            "version": FORMAT_VERSION,
            "audio": {m: [w.sample_rate, a.size] for (m, w), a in zip(audio.items(), arrays)},
            "inputs": others if complete else {},
            "order": list(sample.inputs),
            "complete": complete,
            "crc32": crc,
        }).encode()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + len(header).to_bytes(8, "little") + header)
                for a in arrays:
                    f.write(a.data)
            os.replace(tmp, path)
        except OSError as exc:
            self._write_failed = True
            warnings.warn(f"train.audio_cache=disk: cannot write to {self.directory} ({exc}); this split goes on uncached.", stacklevel=3)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

"""Hostile inputs: random configs and manifests fail with a MultiturboError, never a crash;
degenerate data (one class, a singleton last batch, labels outside the class list)."""

from __future__ import annotations

import copy
import json
import string
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY
from multiturbo.config import apply_overrides, check_config, load_config, validate_config
from multiturbo.data import Collator, make_loader
from multiturbo.dataset import Sample
from multiturbo.errors import ConfigError, DataError, MultiturboError
from multiturbo.run import run_experiment

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

keys = st.sampled_from(["name", "seed", "method", "data", "modalities", "model", "turbo", "train", "options", "fold",
                        "encoder", "dim", "passes", "lr", "epochs", "batch_size", "audio", "text", "size", "x"]) | st.text(max_size=6)
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=8) | st.sampled_from(["turbo", "vanilla", "synthetic", "logmel_cnn", "cpu", "auto", "1e-3"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


def _check(raw) -> None:
    """Validate and resolve ``raw``: it may pass; any failure must be a ConfigError (or MultiturboError)."""
    try:
        check_config(validate_config(raw))
    except MultiturboError:
        pass


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_random_config_mappings_fail_cleanly(raw):
    _check(raw)


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _leaf_paths(v, (*prefix, k))


PATHS = list(_leaf_paths(TINY))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), values | st.just("__delete__")), min_size=1, max_size=3), st.dictionaries(keys, values, max_size=2))
def test_mutated_tiny_configs_fail_cleanly(changes, extra):
    raw = copy.deepcopy(TINY)
    for path, value in changes:
        node = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        else:
            if value == "__delete__":
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
    raw.update(extra)
    _check(raw)


@FUZZ
@given(st.lists(st.text(alphabet=string.printable, max_size=20), max_size=4))
def test_random_overrides_fail_cleanly(overrides):
    try:
        _check(apply_overrides(copy.deepcopy(TINY), overrides))
    except ConfigError:
        pass


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_config_files_fail_cleanly(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(content)
        try:
            load_config(path)
        except MultiturboError:
            pass


# -- manifests -----------------------------------------------------------------------------------

cells = st.text(alphabet=list("ab,\"\n\r ;{}[]:\\é\t1"), max_size=8) | st.sampled_from(["neu", "ang", "label", "text", ""])


def _manifest(tmp: Path, name: str, content: bytes, **options):
    from multiturbo_manifest import ManifestDataset

    path = tmp / name
    path.write_bytes(content)
    options.setdefault("modalities", {"text": {"column": "text", "kind": "text"}})
    try:
        opts = ManifestDataset.Options(path=path, **options)
    except Exception as exc:  # pydantic rejects an option: not the manifest's fault
        pytest.fail(f"bad test options: {exc}")
    try:
        ds = ManifestDataset(opts, seed=0)
        s = ds.splits()
        for split in (s.train, s.val, s.test):
            for i in range(len(split)):
                item = split[i]
                assert isinstance(item.inputs["text"], str) and 0 <= item.label < len(ds.classes)
    except MultiturboError:
        pass


@FUZZ
@given(st.lists(st.lists(cells, min_size=0, max_size=4), max_size=8), st.booleans())
def test_random_csv_manifests_load_or_fail_cleanly(tmp_path, rows, with_header):
    header = [["text", "label"]] if with_header else []
    text = "\n".join(",".join(r) for r in header + rows)
    _manifest(tmp_path, "m.csv", text.encode("utf-8"))


@FUZZ
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(["text", "label", "split", "x"]), values, max_size=4).map(json.dumps),
                          st.text(max_size=20)), max_size=8))
def test_random_jsonl_manifests_load_or_fail_cleanly(tmp_path, lines):
    _manifest(tmp_path, "m.jsonl", "\n".join(lines).encode("utf-8"))
    _manifest(tmp_path, "s.jsonl", "\n".join(lines).encode("utf-8"), split_column="split")


@FUZZ
@given(st.binary(max_size=120))
def test_random_bytes_as_manifest_fail_cleanly(tmp_path, content):
    _manifest(tmp_path, "m.csv", content)
    _manifest(tmp_path, "m.jsonl", content)


def test_non_utf8_manifest_is_a_data_error(tmp_path):
    (tmp_path / "m.csv").write_bytes("text,label\ncaf\xe9,neu\n".encode("latin-1"))
    from multiturbo_manifest import ManifestDataset

    with pytest.raises(DataError, match="UTF-8"):
        ManifestDataset(ManifestDataset.Options(path=tmp_path / "m.csv", modalities={"text": {"column": "text", "kind": "text"}}))


# -- degenerate data -----------------------------------------------------------------------------

def test_a_single_class_is_a_clear_error(tiny_raw, tmp_path):
    rows = [{"text": f"item {i}", "label": "only"} for i in range(12)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    tiny_raw["data"] = {"name": "manifest", "options": {"path": str(tmp_path / "m.jsonl"), "modalities": {"text": {"column": "text", "kind": "text"}}}}
    del tiny_raw["modalities"]["audio"]
    tiny_raw["turbo"] = {"cross_modal": False}
    with pytest.raises(DataError, match="single label"):
        run_experiment(check_config(validate_config(tiny_raw)), tmp_path / "run")
    # the synthetic data set refuses one class already in the config
    tiny_raw = copy.deepcopy(TINY)
    tiny_raw["data"]["options"]["num_classes"] = 1
    with pytest.raises(ConfigError, match="num_classes"):
        check_config(validate_config(tiny_raw))


class _Enc:
    @staticmethod
    def collate(raw):
        return {"x": torch.tensor(raw, dtype=torch.float32)[:, None]}


def test_a_last_batch_of_one_is_dropped_only_with_a_contrastive_term():
    split = [Sample(inputs={"a": float(i)}, label=i % 2, meta={"i": i}) for i in range(9)]  # 9 = 4 + 4 + 1
    collator = Collator({"a": _Enc()}, num_classes=2)
    sizes = lambda loader: [len(b) for b in loader]  # noqa: E731
    assert sizes(make_loader(split, collator, batch_size=4, shuffle=True, drop_singleton=True)) == [4, 4]
    assert sizes(make_loader(split, collator, batch_size=4, shuffle=True, drop_singleton=False)) == [4, 4, 1]
    assert sizes(make_loader(split[:6], collator, batch_size=4, shuffle=True, drop_singleton=True)) == [4, 2]


def test_a_run_with_a_singleton_last_batch_trains(tiny_raw, tmp_path):
    tiny_raw["train"].update(batch_size=41, epochs=1)  # 42 training items: batches of 41 and 1
    metrics = run_experiment(check_config(validate_config(tiny_raw)), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["step"] == 1 and 0.0 <= metrics["wa"] <= 1.0


def test_labels_outside_the_class_list_are_a_data_error():
    collator = Collator({"a": _Enc()}, num_classes=2)
    with pytest.raises(DataError, match="Label out of range"):
        collator([Sample(inputs={"a": 1.0}, label=2, meta={"i": 0}), Sample(inputs={"a": 2.0}, label=0, meta={"i": 1})])
    with pytest.raises(DataError, match="Label out of range"):
        collator([Sample(inputs={"a": 1.0}, label=-1, meta={"i": 0})])


def test_manifest_labels_outside_given_classes_are_a_data_error(tmp_path):
    from multiturbo_manifest import ManifestDataset

    (tmp_path / "m.csv").write_text("text,label\na,neu\nb,sad\n")
    with pytest.raises(DataError, match="labels outside `classes`"):
        ManifestDataset(ManifestDataset.Options(path=tmp_path / "m.csv", classes=["neu", "ang"], modalities={"text": {"column": "text", "kind": "text"}}))


def test_odd_rate_multichannel_audio_and_undecodable_text_go_through_the_encoders(tmp_path):
    """Missing from tests/test_audio.py and the encoder tests: a 3-channel 11025 Hz 16-bit file,
    and text holding lone surrogates (bytes decoded with errors="surrogateescape")."""
    import numpy as np
    import soundfile as sf

    from multiturbo.audio import load_audio
    from multiturbo.plugins import get_registries

    path = tmp_path / "odd.wav"
    sf.write(path, (np.random.default_rng(0).uniform(-0.5, 0.5, (11025 // 3, 3)) * 32767).astype(np.int16), 11025, subtype="PCM_16")
    w = load_audio(path)
    assert w.sample_rate == 11025 and w.samples.ndim == 1 and len(w.samples) == 11025 // 3
    regs = get_registries()
    audio_cls, text_cls = regs.encoders.get("logmel_cnn"), regs.encoders.get("hashed_transformer")
    audio = audio_cls(audio_cls.Options(**TINY["modalities"]["audio"]["options"])).eval()
    text = text_cls(text_cls.Options(**TINY["modalities"]["text"]["options"])).eval()
    with torch.no_grad():
        a = audio(audio.collate([w, w]))
        t = text(text.collate([b"caf\xe9 \xff".decode("utf-8", errors="surrogateescape"), ""]))
    assert torch.isfinite(a).all() and torch.isfinite(t).all()

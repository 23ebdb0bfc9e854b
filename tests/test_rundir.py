"""Loading a run directory back: the model with its best weights, the test split, errors."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml
from conftest import TINY
from safetensors.torch import load_file

from multiturbo.config import check_config, validate_config
from multiturbo.errors import MultiturboError
from multiturbo.metrics import classification_metrics
from multiturbo.rundir import LoadedRun, load_run, make_eval_loader, test_split
from multiturbo.run import run_experiment
from multiturbo.train import predict_probs


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def test_load_run_restores_the_best_weights_in_eval_mode(tiny_run):
    run = load_run(tiny_run)
    assert isinstance(run, LoadedRun) and run.run_dir == tiny_run
    assert run.classes == ["class0", "class1", "class2"] and run.modalities == ["audio", "text"]
    assert run.config.name == "tiny" and run.info["status"] == "finished"
    assert not run.model.training
    saved = load_file(tiny_run / "best.safetensors")
    state = run.model.state_dict()
    assert saved.keys() <= state.keys()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_the_loaded_run_reproduces_its_test_metrics(tiny_run):
    run = load_run(tiny_run)
    split = test_split(run)
    info = json.loads((tiny_run / "run.json").read_text())
    assert len(split) == info["split_sizes"]["test"]
    probs, labels = predict_probs(run.model, make_eval_loader(run, split), run.device)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    again = classification_metrics(probs, labels)
    assert again["confusion"] == metrics["confusion"]
    assert again["wa"] == pytest.approx(metrics["wa"]) and again["ua"] == pytest.approx(metrics["ua"])


def test_missing_directory(tmp_path):
    with pytest.raises(MultiturboError, match="no such run directory"):
        load_run(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["config.yaml", "run.json", "best.safetensors"])
def test_incomplete_directory_names_the_missing_file(run_copy, name):
    (run_copy / name).unlink()
    with pytest.raises(MultiturboError, match=rf"incomplete: {name.replace('.', '[.]')} missing"):
        load_run(run_copy)


@pytest.mark.parametrize("status", ["running", "failed"])
def test_unfinished_run_is_refused(run_copy, status):
    info = json.loads((run_copy / "run.json").read_text())
    info.update(status=status, error="TrainingError: Non-finite loss" if status == "failed" else None)
    (run_copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(MultiturboError, match=f"did not finish \\(status '{status}'"):
        load_run(run_copy)
    assert load_run(run_copy, require_finished=False).classes == info["classes"]


def rebind(run_dir, name="best.safetensors"):
    """Rewrite ``name`` with the digest of the config.yaml and run.json now in ``run_dir`` (as if
    the run had been trained with them)."""
    from safetensors.torch import save_file

    from multiturbo.rundir import weights_metadata

    save_file(load_file(run_dir / name), run_dir / name, metadata=weights_metadata(run_dir))


def test_weights_that_do_not_fit_the_config(run_copy):
    raw = yaml.safe_load((run_copy / "config.yaml").read_text())
    raw["model"]["dim"] = 8
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MultiturboError, match="best.safetensors does not belong to the config.yaml"):
        load_run(run_copy)
    rebind(run_copy)
    with pytest.raises(MultiturboError, match="does not fit the model"):
        load_run(run_copy)


# -- the binding of weights, config and classes (issue 15) -----------------------------------------
def test_an_edited_config_with_the_same_weight_shapes_is_refused(run_copy):
    raw = yaml.safe_load((run_copy / "config.yaml").read_text())
    raw["modalities"]["audio"]["options"]["n_mels"] = 8  # same weights, other preprocessing
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MultiturboError, match=r"best.safetensors does not belong to the config.yaml and the class list"):
        load_run(run_copy)


def test_a_reordered_class_list_is_refused(run_copy):
    info = json.loads((run_copy / "run.json").read_text())
    info["classes"] = info["classes"][::-1]
    (run_copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(MultiturboError, match="does not belong"):
        load_run(run_copy)


def test_comments_and_layout_of_config_yaml_do_not_count(run_copy):
    text = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text("# my notes\n" + yaml.safe_dump(yaml.safe_load(text), sort_keys=True))
    load_run(run_copy)


def test_non_finite_weights_are_refused(run_copy):
    from safetensors.torch import save_file

    from multiturbo.rundir import weights_metadata

    tensors = load_file(run_copy / "best.safetensors")
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name][...] = float("nan")
    save_file(tensors, run_copy / "best.safetensors", metadata=weights_metadata(run_copy))
    with pytest.raises(MultiturboError, match=f"non-finite weights .*{name}"):
        load_run(run_copy)


def test_a_file_that_is_not_safetensors_says_so(run_copy):
    (run_copy / "best.safetensors").write_bytes(b"PK\x03\x04 a zip, not weights" * 10)
    with pytest.raises(MultiturboError, match="best.safetensors is not a safetensors file"):
        load_run(run_copy)


def test_weights_without_a_digest_load_with_a_warning(run_copy):
    from safetensors.torch import save_file

    save_file(load_file(run_copy / "best.safetensors"), run_copy / "best.safetensors")
    with pytest.warns(UserWarning, match="records no digest"):
        load_run(run_copy)


def test_every_weights_file_and_the_checkpoint_carry_the_digest(tmp_path):
    from multiturbo.checkpoint import read_header_metadata
    from multiturbo.rundir import binding_digest

    cfg = copy.deepcopy(TINY)
    cfg["train"]["epochs"] = 1
    out = tmp_path / "run"
    run_experiment(check_config(validate_config(cfg)), out)
    digest = binding_digest(out)
    assert digest and digest.startswith("sha256:")
    for name in ("best.safetensors", "last.safetensors"):
        assert read_header_metadata(out / name)["multiturbo_binding"] == digest


def test_a_damaged_config_is_a_config_error(run_copy):
    raw = yaml.safe_load((run_copy / "config.yaml").read_text())
    raw["turbo"]["passes"] = "two"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MultiturboError, match="turbo.passes"):
        load_run(run_copy)


def test_corrupt_run_json(run_copy):
    (run_copy / "run.json").write_text("{not json")
    with pytest.raises(MultiturboError, match="not valid JSON"):
        load_run(run_copy)


# -- compatibility: run.json's multiturbo_version ------------------------------------------------
@pytest.mark.parametrize("version", ["0.1.0", "0.1.7", "0.1.0+local"])
def test_a_run_of_the_same_minor_version_loads(run_copy, version):
    info = json.loads((run_copy / "run.json").read_text())
    info["multiturbo_version"] = version
    (run_copy / "run.json").write_text(json.dumps(info))
    assert load_run(run_copy).classes == info["classes"]


@pytest.mark.parametrize("version", ["0.2.0", "1.1.0", "0.0.9", "nonsense", None])
def test_a_run_of_another_version_is_refused(run_copy, version):
    from multiturbo import __version__

    info = json.loads((run_copy / "run.json").read_text())
    if version is None:
        del info["multiturbo_version"]
    else:
        info["multiturbo_version"] = version
    (run_copy / "run.json").write_text(json.dumps(info))
    match = "records no multiturbo_version" if version is None else rf"trained with multiturbo {version}, but multiturbo {__version__}"
    with pytest.raises(MultiturboError, match=match):
        load_run(run_copy)


# -- self-contained runs: Encoder.export_assets ---------------------------------------------------
def test_encoders_without_assets_write_nothing(run_copy):
    from multiturbo.rundir import export_assets

    assert export_assets(load_run(run_copy).model.encoders, run_copy) == {}
    assert not (run_copy / "assets").exists() and not (run_copy / "assets.json").exists()


def _vocab_plugin():
    """A text encoder whose option names a vocabulary file it needs at construction (like a tokenizer)."""
    import types
    from pathlib import Path

    from torch import nn

    from multiturbo import Encoder, EncoderOptions, hookimpl

    class VocabOptions(EncoderOptions):
        vocab: str

    class VocabEncoder(Encoder):
        Options = VocabOptions

        def __init__(self, options):
            super().__init__(options)
            self.words = Path(options.vocab).read_text().split()  # fails when the file is gone
            self.output_dim = 8
            self.emb = nn.EmbeddingBag(len(self.words) + 1, 8)

        def collate(self, raw):
            ids = [[self.words.index(w) + 1 if w in self.words else 0 for w in (t.split() or [""])] for t in raw]
            n = max(map(len, ids))
            return {"ids": torch.tensor([i + [0] * (n - len(i)) for i in ids])}

        def forward(self, batch):
            return self.emb(batch["ids"])

        def export_assets(self, directory):
            (directory / "vocab.txt").write_text("\n".join(self.words))
            return {"vocab": directory / "vocab.txt"}

    module = types.ModuleType("vocab_plugin")

    @hookimpl
    def register_encoders(register):
        register("vocab_bag", VocabEncoder)

    module.register_encoders = register_encoders
    return module


def test_assets_make_a_run_loadable_without_the_original_files(tmp_path):
    from multiturbo.plugins import plugin_registered
    from multiturbo_synthetic import class_words

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(sorted({w for c in range(3) for w in class_words(c)})))
    raw = copy.deepcopy(TINY)
    raw["modalities"]["text"] = {"encoder": "vocab_bag", "options": {"vocab": str(vocab)}}
    raw["train"]["epochs"] = 1
    with plugin_registered(_vocab_plugin(), "vocab-plugin"):
        out = tmp_path / "run"
        run_experiment(check_config(validate_config(raw)), out)
        before = load_run(out)
        record = json.loads((out / "assets.json").read_text())  # written by run_experiment at the start of the run
        assert record == {"text": {"encoder": "VocabEncoder", "options": {"vocab": "assets/text/vocab.txt"}, "paths": ["vocab"]}}
        assert "audio" not in record and not (out / "assets" / "audio").exists()
        vocab.unlink()
        moved = tmp_path / "moved"
        shutil.move(str(out), moved)  # the run directory is self-contained: it can move
        after = load_run(moved)
        assert after.assets == {"text": {"vocab": str((moved / "assets" / "text" / "vocab.txt").resolve())}}
        split = test_split(before)
        p1, _ = predict_probs(before.model, make_eval_loader(before, split), before.device)
        p2, _ = predict_probs(after.model, make_eval_loader(after, split), after.device)
        torch.testing.assert_close(p1, p2)
        shutil.rmtree(moved / "assets")
        with pytest.raises(MultiturboError, match=r"incomplete: assets/text/vocab.txt .* is missing"):
            load_run(moved)


def test_a_hugging_face_encoder_rebuilds_from_its_assets_offline(tmp_path, monkeypatch):
    """hf_text from a tiny BERT directory; the directory is deleted before loading the run."""
    import sys
    from pathlib import Path

    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    from tiny_hf import _save_bert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    bert = Path(_save_bert(tmp_path / "bert"))
    raw = copy.deepcopy(TINY)
    raw["modalities"]["text"] = {"encoder": "hf_text", "options": {"model": str(bert), "dropout": 0.2}}
    raw["train"]["epochs"] = 1
    out = tmp_path / "run"
    run_experiment(check_config(validate_config(raw)), out)
    before = load_run(out)
    assert json.loads((out / "assets.json").read_text())["text"]["encoder"] == "HFText"  # written by run_experiment
    saved = {p.name for p in (out / "assets" / "text").iterdir()}
    assert {"config.json", "CONFIG_ONLY", "tokenizer.json"} <= saved
    assert not any(n.endswith((".safetensors", ".bin")) for n in saved)  # the weights are in best.safetensors
    shutil.rmtree(bert)
    after = load_run(out)
    assert after.assets["text"]["local_files_only"] is True
    assert after.model.encoders["text"].model.config.hidden_dropout_prob == 0.2
    split = test_split(before)
    p1, _ = predict_probs(before.model, make_eval_loader(before, split), before.device)
    p2, _ = predict_probs(after.model, make_eval_loader(after, split), after.device)
    torch.testing.assert_close(p1, p2)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "gpt2"])
def test_hugging_face_assets_rebuild_every_family_without_weights(tmp_path, monkeypatch, family):
    """export_assets saves config + preprocessing only; the rebuilt encoder, given the trained
    state (what best.safetensors holds), computes what the original computes."""
    import sys
    import warnings
    from pathlib import Path

    import numpy as np

    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    import tiny_hf

    from multiturbo_hf import HFAudio, HFText, HFWhisper, assets

    save = {"wav2vec2": lambda p: tiny_hf._save_audio(p, tiny_hf.transformers.Wav2Vec2Config, tiny_hf.transformers.Wav2Vec2Model),
            "whisper": tiny_hf._save_whisper, "gpt2": tiny_hf._save_gpt2}[family]
    cls = {"wav2vec2": HFAudio, "whisper": HFWhisper, "gpt2": HFText}[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = Path(save(tmp_path / family))
        enc = cls(cls.Options(model=str(original), dropout=0.1)).eval()
        overrides = assets.export_assets(enc, tmp_path / "assets")
        assert overrides == {"model": tmp_path / "assets", "local_files_only": True}
        assert not any(p.suffix in (".safetensors", ".bin") for p in (tmp_path / "assets").iterdir())
        shutil.rmtree(original)
        again = cls(cls.Options(model=str(overrides["model"]), local_files_only=True, dropout=0.1)).eval()
    again.load_state_dict(enc.state_dict())
    raw = ["hello world", ""] if cls is HFText else [np.random.default_rng(0).standard_normal(8000).astype(np.float32)]
    with torch.no_grad():
        torch.testing.assert_close(again(again.collate(raw)), enc(enc.collate(raw)))


def test_an_asset_path_outside_the_directory_is_refused(run_copy, tmp_path):
    from multiturbo.rundir import export_assets

    class Leaky(torch.nn.Module):
        def export_assets(self, directory):
            return {"vocab": tmp_path / "elsewhere.txt"}

    with pytest.raises(MultiturboError, match="a path outside its assets directory"):
        export_assets({"text": Leaky()}, run_copy)


def test_export_assets_replaces_a_previous_runs_assets(run_copy):
    from multiturbo.rundir import export_assets

    (run_copy / "assets" / "text").mkdir(parents=True)
    (run_copy / "assets.json").write_text('{"text": {"options": {"vocab": "assets/text/v.txt"}, "paths": ["vocab"]}}')
    assert export_assets({}, run_copy) == {}
    assert not (run_copy / "assets").exists() and not (run_copy / "assets.json").exists()
    load_run(run_copy)


# -- renamed plugins: aliases ----------------------------------------------------------------------
def test_a_renamed_encoder_still_loads_an_old_run_directory(tiny_run, run_copy):
    """The run was trained when its audio encoder was called "old_mel"; the plugin has since renamed
    it "mel_v2" and registers the old name as an alias: the old run directory loads, unchanged."""
    from multiturbo import hookimpl
    from multiturbo.plugins import get_registries, plugin_registered

    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    cls = get_registries().encoders.get(saved["modalities"]["audio"]["encoder"])
    saved["modalities"]["audio"]["encoder"] = "old_mel"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    rebind(run_copy)  # as trained when the encoder was called old_mel
    with pytest.raises(MultiturboError, match="Unknown encoder 'old_mel'"):
        load_run(run_copy)

    class Renamed:
        @hookimpl
        def register_encoders(self, register):
            register("mel_v2", cls, aliases=("old_mel",))

    with plugin_registered(Renamed(), "renamed"):
        registry = get_registries().encoders
        assert "old_mel" in registry and registry.current_name("old_mel") == "mel_v2" and "old_mel" not in registry.names()
        with pytest.warns(DeprecationWarning, match="'old_mel' is deprecated: it now is 'mel_v2'"):
            run = load_run(run_copy)
    reference = load_run(tiny_run)
    for (name, a), b in zip(run.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_an_alias_may_not_take_a_registered_name():
    from multiturbo.encoder import Encoder
    from multiturbo.registry import Registry

    reg = Registry("encoder", Encoder)
    reg.add("a", Encoder, "p")
    with pytest.raises(MultiturboError, match="Duplicate encoder name 'a'"):
        reg.add("b", Encoder, "q", aliases=("a",))
    reg.add("c", Encoder, "q", aliases=("old_c",))
    with pytest.raises(MultiturboError, match="Duplicate encoder name 'old_c': registered by plugin 'q'"):
        reg.add("old_c", Encoder, "r")


def test_the_run_directory_records_the_ids_of_each_split(tiny_run):
    membership = json.loads((tiny_run / "splits.json").read_text())
    info = json.loads((tiny_run / "run.json").read_text())
    assert membership["id"] == "index"  # the synthetic data set's item id
    assert {s: len(membership[s]) for s in ("train", "val", "test")} == info["split_sizes"]
    ids = [i for s in ("train", "val", "test") for i in membership[s]]
    assert len(ids) == len(set(ids))  # no item in two splits
    run = load_run(tiny_run)
    assert [m["index"] for m in (s.meta for s in test_split(run))] == membership["test"]

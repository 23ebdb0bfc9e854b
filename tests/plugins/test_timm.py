"""The timm encoder: model by name, local weights only, its own eval transform, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from multiturbo.errors import ConfigError, DataError
from multiturbo.plugins import get_registries
from multiturbo_timm import TimmEncoder, to_rgb_image


def make(**options) -> TimmEncoder:
    cls = get_registries().encoders.get("timm")
    torch.manual_seed(0)
    return cls(cls.Options(**{"model": "test_vit", "image_size": 32, **options}))


def test_registered_and_pooled_features():
    enc = make()
    assert isinstance(enc, TimmEncoder) and enc.output_dim == enc.model.num_features == 64
    assert enc.data_config["input_size"] == (3, 32, 32)
    batch = enc.collate([np.zeros((10, 12), np.float32), np.full((40, 30, 3), 200, np.uint8)])
    assert batch["image"].shape == (2, 3, 32, 32)
    assert enc(batch).shape == (2, 64)


def test_uses_the_models_own_normalisation():
    enc = make()
    white = enc.collate([np.ones((32, 32, 3), np.float32)])["image"]
    mean, std = enc.data_config["mean"][0], enc.data_config["std"][0]
    torch.testing.assert_close(white, torch.full_like(white, (1.0 - mean) / std))


def test_unknown_model_lists_close_matches():
    with pytest.raises(ConfigError, match="resnet18"):
        make(model="resnet_18")


def test_images_from_files_gray_and_rgba_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.zeros((20, 20), np.uint8)])).save(tmp_path / "rgba.png")
    assert to_rgb_image(tmp_path / "gray.png").mode == "RGB"
    rgba = to_rgb_image(tmp_path / "rgba.png")  # alpha dropped, not composited
    assert rgba.mode == "RGB" and np.array_equal(np.array(rgba), rgb)
    gray = np.array(to_rgb_image(str(tmp_path / "gray.png")))
    assert np.array_equal(gray[:, :, 0], gray[:, :, 2])
    enc = make()
    out = enc.collate([tmp_path / "rgb.png", str(tmp_path / "gray.png"), tmp_path / "rgba.png"])
    assert out["image"].shape == (3, 3, 32, 32)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    enc = make()
    for name in ("bad.jpg", "cut.jpg", "gone.png"):
        with pytest.raises(DataError, match=name):
            enc.collate([np.zeros((8, 8), np.float32), tmp_path / name])


def test_bad_arrays_are_data_errors():
    enc = make()
    with pytest.raises(DataError, match="channels last"):
        enc.collate([np.zeros((3, 8, 8), np.float32).transpose(1, 2, 0)[:, :, :2]])
    with pytest.raises(DataError, match="NaN"):
        enc.collate([np.full((8, 8), np.nan, np.float32)])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_and_directory(tmp_path, suffix):
    src = make()
    state = {k: v.clone() for k, v in src.model.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(10, 64), torch.zeros(10)  # a classifier: ignored
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    torch.manual_seed(123)
    enc = make(weights=str(path))
    for k, v in src.model.state_dict().items():
        torch.testing.assert_close(enc.model.state_dict()[k], v)
    (tmp_path / "dir").mkdir()
    save_file({k: v for k, v in state.items() if not k.startswith("head")}, str(tmp_path / "dir" / "model.safetensors"))
    enc = make(weights=str(tmp_path / "dir"))
    torch.testing.assert_close(enc.model.state_dict()["cls_token"], src.model.state_dict()["cls_token"])


def test_weights_that_do_not_fit_name_the_file_and_keys(tmp_path):
    state = make().model.state_dict()
    wrong = dict(state)
    wrong.pop("cls_token")
    wrong["blocks.0.norm1.weight"] = torch.ones(7)
    wrong["extra.weight"] = torch.ones(2)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(path))
    with pytest.raises(ConfigError) as info:
        make(weights=str(path))
    msg = str(info.value)
    assert "other.safetensors" in msg and "cls_token" in msg and "extra.weight" in msg and "blocks.0.norm1.weight" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        make(weights=str(tmp_path / "nope.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.safetensors"):
        make(weights=str(tmp_path / "empty"))


def test_pretrained_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the local cache"):
        make(pretrained=True)


def test_frozen_batch_norm_keeps_items_independent_in_training():
    enc = make(model="test_resnet", drop_rate=0.0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    enc.train()
    images = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(3)]
    with torch.no_grad():
        together = enc(enc.collate(images))
        alone = enc(enc.collate(images[:1]))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


def test_freeze_and_dropout_views():
    enc = make(freeze=True, drop_rate=0.3)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    batch = enc.collate([np.random.default_rng(0).random((32, 32)).astype(np.float32)] * 2)
    with torch.no_grad():
        assert not torch.allclose(enc(batch), enc(batch))

"""The ``timm`` image encoder: any timm model by name, pooled features, its own eval transform.

Raw input: an image file path (str or Path, read with Pillow), a PIL image, or a numpy array /
tensor [H, W] or [H, W, C] (channels last; uint8 in 0..255, or float in 0..1, clipped).
Every image is converted to RGB: grayscale (L, I, F, 1-bit, [H, W], [H, W, 1]) is replicated to
3 channels, palette images are expanded, and an alpha channel (RGBA, LA, [H, W, 4]) is DROPPED,
not composited on a background.

    collate:  B images -> PIL RGB -> the model's eval transform (timm.data.resolve_data_config +
              create_transform: resize, centre crop, normalise with the model's mean / std)
              -> {"image": [B, 3, S, S]}
    forward:  timm model with num_classes=0 (its own global pooling) -> [B, num_features]

Weights are never downloaded at run time. The model is built with ``pretrained=False``; then
``weights`` (a .safetensors / .pth / .pt / .bin file, or a directory holding model.safetensors
or pytorch_model.bin, as timm's hub exports) is loaded, or with ``pretrained: true`` the model's
default weights are taken from the local Hugging Face cache or torch hub cache if (and only if)
they are already there. The classifier's keys in a checkpoint are ignored (the encoder has no
classifier); any other missing, unexpected or mis-shaped key fails and names the file.

Dropout: ``drop_rate`` (before the pooled features' classifier position, i.e. on the pooled
vector here and inside blocks where the model uses it) and ``drop_path_rate`` (stochastic depth)
are timm's own arguments; Turbo's K views differ through them and the projection's dropout.

BatchNorm: ``batch_norm: frozen`` (default) turns BatchNorm layers into timm's
FrozenBatchNorm2d, which always uses its running statistics: an item's vector then never
depends on the other items of the batch, as the engine requires (its K copies of a batch
would otherwise share batch statistics). ``batch_norm: train`` keeps them trainable (use
with care). Models without BatchNorm (ViT, ConvNeXt...) are unaffected.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from multiturbo.encoder import Encoder, EncoderOptions
from multiturbo.errors import ConfigError, DataError
from multiturbo.hookspecs import Register, hookimpl

__all__ = ["TimmEncoder", "TimmOptions", "to_rgb_image", "load_state_dict_file", "register_encoders"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class TimmOptions(EncoderOptions):
    model: str = Field(description="timm model name, e.g. 'resnet18', 'vit_small_patch16_224', 'convnext_tiny'.")
    weights: Path | None = Field(None, description="Local weights: a .safetensors/.pth/.pt/.bin file or a directory with model.safetensors or pytorch_model.bin. None: random init (or the cache, see pretrained).")
    pretrained: bool = Field(False, description="Use the model's default pretrained weights from the local cache (Hugging Face or torch hub) when already present; never downloads. Ignored when weights is set.")
    freeze: bool = Field(False, description="Freeze every weight of the timm model (dropout stays on; the projection still trains).")
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0, description="timm's drop_rate: dropout on the pooled features (and in the blocks of models that use it).")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="timm's drop_path_rate (stochastic depth).")
    image_size: int | None = Field(None, ge=8, description="Input size override (square); also given to models that take img_size (ViT). None: the model's own.")
    batch_norm: Literal["frozen", "train"] = Field("frozen", description="frozen: BatchNorm uses running statistics (items stay independent); train: batch statistics.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for timm.create_model.")


def _unknown_model(name: str) -> ConfigError:
    import timm

    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6) or timm.list_models(f"*{name}*")[:5]
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return ConfigError([f"model: timm has no model {name!r}.{hint} List them with timm.list_models('pattern*')."])


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """A checkpoint file as a flat state dict: safetensors, or torch (weights_only) with 'state_dict'/'model' nesting."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError([f"weights: cannot read {path} ({type(exc).__name__}: {exc}). Give a .safetensors, .pth, .pt or .bin checkpoint."]) from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError([f"weights: {path} does not hold a state dict (name -> tensor)."])
    return {k.removeprefix("module."): v for k, v in state.items()}


def _cached_default_weights(model: torch.nn.Module) -> Path | None:
    """The model's default pretrained file if already in a local cache (no network)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in WEIGHT_FILES:
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _to_pil(image: Any, where: str):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                return im.copy()
        except FileNotFoundError:
            raise DataError(f"The timm encoder cannot find the image file {path} ({where}). Check the path.") from None
        except Exception as exc:  # UnidentifiedImageError, OSError('image file is truncated'), ...
            raise DataError(f"The timm encoder cannot read the image file {path} ({where}): {type(exc).__name__}: {exc}. Replace or remove it.") from None
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise DataError(f"The timm encoder got a {type(image).__name__} ({where}); it expects an image path, a PIL image, or an array [H, W] / [H, W, C].")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise DataError(f"The timm encoder expects images [H, W] or [H, W, C] with C in 1, 3, 4 (channels last), got shape {a.shape} ({where}). Transpose [C, H, W] arrays with .transpose(1, 2, 0).")
    if a.dtype != np.uint8:
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise DataError(f"The timm encoder got an image array of dtype {a.dtype} ({where}); use uint8 (0..255) or float (0..1).")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"The timm encoder got an image with NaN or infinite values ({where}).")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def to_rgb_image(image: Any, where: str = "an item"):
    """Any accepted raw image as a PIL RGB image (grayscale replicated, palette expanded, alpha dropped)."""
    im = _to_pil(image, where)
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA"):  # drop alpha (no compositing)
        im = im.convert("RGBA") if im.mode == "PA" else im
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


class TimmEncoder(Encoder):
    """A timm model (``num_classes=0``: pooled features) with its eval transform in collate."""

    Options = TimmOptions

    def __init__(self, options: TimmOptions):
        super().__init__(options)
        import timm
        from timm.data import create_transform, resolve_data_config

        o = options
        if not timm.is_model(o.model):
            raise _unknown_model(o.model)
        kwargs = dict(o.model_kwargs, drop_rate=o.drop_rate)
        if o.drop_path_rate:
            kwargs["drop_path_rate"] = o.drop_path_rate
        if o.image_size is not None:
            kwargs["img_size"] = o.image_size
        try:
            try:
                self.model = timm.create_model(o.model, pretrained=False, num_classes=0, **kwargs)
            except TypeError as exc:  # CNNs take no img_size: their input size is free
                if "img_size" not in kwargs or "img_size" not in str(exc):
                    raise
                kwargs.pop("img_size")
                self.model = timm.create_model(o.model, pretrained=False, num_classes=0, **kwargs)
        except TypeError as exc:
            raise ConfigError([f"model_kwargs / drop_path_rate: timm model {o.model!r} rejects an argument ({exc})."]) from None
        path = o.weights.expanduser() if o.weights is not None else None
        if path is None and o.pretrained:
            path = _cached_default_weights(self.model)
            if path is None:
                raise ConfigError([f"pretrained: the default weights of {o.model!r} are not in the local cache, and multiturbo never downloads at run time. Download them once (timm.create_model({o.model!r}, pretrained=True) on a machine with access), or set `weights` to a local file."])
        if path is not None:
            self.load_weights(path)
        if o.batch_norm == "frozen":
            from timm.layers import freeze_batch_norm_2d

            self.model = freeze_batch_norm_2d(self.model)
        if o.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.output_dim = int(self.model.num_features)
        overrides = {"input_size": (3, o.image_size, o.image_size)} if o.image_size is not None else {}
        self.data_config = resolve_data_config(overrides, model=self.model)
        self.transform = create_transform(**self.data_config, is_training=False)

    def load_weights(self, path: Path) -> None:
        """Load a local checkpoint file or directory into the model; fails naming the file and the keys."""
        if path.is_dir():
            files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
            if not files:
                raise ConfigError([f"weights: the directory {path} holds none of {', '.join(WEIGHT_FILES)}."])
            path = files[0]
        elif not path.is_file():
            raise ConfigError([f"weights: the file {path} does not exist."])
        state = load_state_dict_file(path)
        own = self.model.state_dict()
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in state.items() if k in own or not any(k == h or k.startswith(h + ".") for h in heads)}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(state) & set(own) if state[k].shape != own[k].shape)

        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        problems = [f"{what}: {listing(keys)}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", shapes)) if keys]
        if problems:
            raise ConfigError([f"weights: {path} does not fit timm model {self.options.model!r} ({'; '.join(problems)}). Check that the file was saved from this architecture (and image_size)."])
        self.model.load_state_dict(state, strict=True)

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B images -> {"image": [B, 3, S, S]} through the model's eval transform."""
        if len(raw) == 0:
            raise DataError("The timm encoder got an empty batch. Pass at least one image.")
        images = [self.transform(to_rgb_image(item, f"item {i} of the batch")) for i, item in enumerate(raw)]
        return {"image": torch.stack(images)}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"image": [B, 3, S, S]} -> [B, num_features]."""
        return self.model(batch["image"])


@hookimpl
def register_encoders(register: Register) -> None:
    register("timm", TimmEncoder)

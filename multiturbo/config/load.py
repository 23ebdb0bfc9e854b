"""Reading, overriding, validating and resolving configs.

Errors never surface as pydantic tracebacks: each problem becomes one
``location: message`` line of a :class:`~multiturbo.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import reprlib
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, PluginError
from .schema import GROUP_PARTS, ExperimentConfig, TrainConfig

Loc = tuple[str | int, ...]


MAX_NODES = 100_000  # a config, its aliases expanded, holds at most this many values (a YAML "billion laughs" is refused)
MAX_ECHO = 200  # characters of an invalid value shown in an error


class _DuplicateKey(yaml.YAMLError):
    pass


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no object construction) that refuses a key given twice in one mapping
    (plain YAML keeps the last one silently). A merge key (``<<: *base``) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(f"line {line}: the key {_short(key)} is given twice in one mapping (first on line "
                                        f"{seen[key]}); YAML would keep only the last one. Remove one of them.")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters (without building the whole repr of a huge value)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = r.maxlong = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 20
    r.maxlevel = 4
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_size(raw: Any, where: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES values (or that refers to itself)."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError([f"{where}: the config expands to more than {MAX_NODES} values: a huge value, or YAML aliases "
                               f"(*name) that repeat anchored parts (&name) over and over or refer to themselves. A config "
                               f"needs far fewer; write the values out, or use fewer nested aliases."])
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def safe_yaml(text: str, where: str) -> Any:
    """Parse config YAML: safe (no objects), duplicate keys refused, alias expansion bounded; a
    ConfigError naming ``where`` otherwise."""
    try:
        loader = _ConfigLoader(text)  # what yaml.load does, with a SafeLoader
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        raise ConfigError([f"{where}: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where}: not valid YAML: {_cut(str(exc), 600)}"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: the YAML is nested too deeply to read."]) from None
    _check_size(raw, where)
    return raw


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with :func:`safe_yaml` (no object construction, no duplicate keys, bounded aliases)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such file. Give the path of a YAML config, e.g. configs/demo.yaml."])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text. Save the config as UTF-8."]) from None
    raw = safe_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping (key: value lines), got {type(raw).__name__}."])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: 3, 0.5, true, [a, b]) to a copy."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError([f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set turbo.passes=3"])
        try:
            value = safe_yaml(text, f"--set {_cut(item, MAX_ECHO)}")
        except ConfigError as exc:
            if "expands to more than" in str(exc) or "given twice" in str(exc):
                raise
            value = text
        _set_path(out, parts, value, f"--set {item!r}")
    return out


def apply_values(raw: dict[str, Any], values: dict[str, Any], what: str = "tune.space") -> dict[str, Any]:
    """Set ``{"a.b.c": value}`` in a copy of ``raw`` (values as they are, not parsed), as ``--set``
    does; ``what`` names the source in errors. Missing sections are created (validation then
    refuses unknown keys)."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError([f"{what}.{key}: expected a dotted config path, e.g. turbo.temperature."])
        _set_path(out, parts, value, f"{what}.{key}")
    return out


def _set_path(node: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError([f"{what}: {where} is {_short(child)}, not a section, so it has no keys."])
        node = child
    node[parts[-1]] = value


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of ``loc`` (for key suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
        if typing.get_origin(current) in (typing.Union, types.UnionType):  # Optional[X] -> X
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[0] if len(args) == 1 else current
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: Loc = ()) -> list[str]:
    """One ``location: message`` line per pydantic error, with hints for unknown keys."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            known = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"{where}: unknown key.{hint} Known keys here: {', '.join(known)}.")
        elif err["type"] == "missing":
            lines.append(f"{where}: required key is missing.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {_cut(msg, MAX_ECHO)} (got {_short(err.get('input'))}).")
    return lines


def validate_config(raw: dict[str, Any], source: str | None = None) -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig` (presets applied)."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ExperimentConfig), source) from None


def check_config(cfg: ExperimentConfig, registries=None, source: str | None = None) -> ExperimentConfig:
    """Resolve plugin names and options (defaults filled) and check cross-field rules.

    Returns a new config whose plugin ``options`` hold every option with its value, so
    the saved config says exactly what ran.
    """
    if registries is None:
        from ..plugins import get_registries  # the plugins import torch (seconds): schema errors show before it

        registries = get_registries()
    lines: list[str] = []
    data = cfg.data.model_copy()
    opts = _resolve(registries.datasets, cfg.data.name, cfg.data.options, ("data", "name"), ("data", "options"), lines)
    if opts is not None:
        data = data.model_copy(update={"options": opts})
    modalities = {}
    for m, mc in cfg.modalities.items():
        opts = _resolve(registries.encoders, mc.encoder, mc.options, ("modalities", m, "encoder"), ("modalities", m, "options"), lines)
        modalities[m] = mc.model_copy(update={"options": opts}) if opts is not None else mc
    model = cfg.model
    try:
        head = cfg.model.head or registries.heads.default()  # the resolved config names the head that ran
    except PluginError as exc:
        lines.append(f"model.head: {exc}")
        head = None
    opts = _resolve(registries.heads, head, cfg.model.head_options, ("model", "head"), ("model", "head_options"), lines) if head else None
    model = model.model_copy(update={"head": head, **({"head_options": opts} if opts is not None else {})})

    t, M = cfg.turbo, len(cfg.modalities)
    if t.in_modal and t.passes < 2:
        lines.append(f"turbo.in_modal: in-modal terms compare passes of one modality and need turbo.passes >= 2 (got {t.passes}). Set turbo.passes=2 or turbo.in_modal=false.")
    if t.cross_modal and M < 2:
        lines.append(f"turbo.cross_modal: cross-modal terms need at least 2 modalities (config has {M}). Add a modality or set turbo.cross_modal=false.")
    if t.any_term and cfg.train.batch_size < 2:
        lines.append(f"train.batch_size: a contrastive term needs batch_size >= 2 (InfoNCE takes its negatives from the batch; got {cfg.train.batch_size}).")
    if t.any_term and t.ce_weight == 1.0:
        lines.append("turbo.ce_weight: 1.0 gives the contrastive terms zero weight while they are switched on. Lower ce_weight or use method: vanilla.")
    if t.learn_temperature and t.temperature < t.min_temperature:
        lines.append(f"turbo.temperature: {t.temperature} is below turbo.min_temperature={t.min_temperature}.")
    if cfg.train.grad_cache_chunk is not None and cfg.model.feature_norm == "batch":
        lines.append("model.feature_norm: batch normalises over the whole batch, but train.grad_cache_chunk encodes the batch in "
                     "chunks, whose statistics differ from the batch's (the cached and the replayed views would not be the "
                     "step's). Set model.feature_norm=layer (per item) or none with gradient caching.")

    lines.extend(check_group_names(cfg.train, list(cfg.modalities)))
    lines.extend(check_tracking(cfg.train))
    if lines:
        raise ConfigError(lines, source)
    return cfg.model_copy(update={"data": data, "modalities": modalities, "model": model})


def _resolve(registry, name: str, options: dict[str, Any], name_loc: Loc, options_loc: Loc, lines: list[str]) -> dict[str, Any] | None:
    try:
        cls = registry.get(name)
    except PluginError as exc:
        lines.append(f"{'.'.join(map(str, name_loc))}: {exc}")
        return None
    try:
        return cls.Options.model_validate(options).model_dump(mode="json")
    except ValidationError as exc:
        lines.extend(format_validation_error(exc, cls.Options, options_loc))
        return None


def load_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config file as a mapping with ``overrides`` applied and ``name`` defaulting to the file's stem."""
    raw = apply_overrides(read_yaml(path), overrides)
    raw.setdefault("name", Path(path).stem)
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = (), registries=None) -> ExperimentConfig:
    """Read, override, validate and resolve a config file; raises ConfigError on any problem."""
    return check_config(validate_config(load_raw(path, overrides), str(path)), registries, str(path))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The config as YAML, every field included (the resolved config saved with a run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def group_names(modalities: Sequence[str]) -> list[str]:
    """The names train.lr_groups / train.weight_decay_groups accept for these modalities."""
    return [*modalities, *GROUP_PARTS]


def check_group_names(train: TrainConfig, modalities: Sequence[str]) -> list[str]:
    """``location: message`` lines for every group that names no part of the model."""
    valid = group_names(modalities)
    lines = []
    for key in ("lr_groups", "weight_decay_groups"):
        for name in getattr(train, key):
            if name not in valid:
                lines.append(f"train.{key}.{name}: {name!r} names no part of the model. The groups are the modalities "
                             f"(their encoders) and projections, head, temperature: {', '.join(valid)}.")
    return lines


MLFLOW_INSTALL = 'pip install "multiturbo[mlflow]"'
# URI schemes of the databases MLflow stores runs in through SQLAlchemy (and migrates with alembic).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_scheme(train: TrainConfig) -> str:
    """The scheme of the tracking URI a run will use: ``train.tracking_uri``, else $MLFLOW_TRACKING_URI,
    else ``sqlite`` (the default store, :func:`multiturbo.tracking.tracking_uri`)."""
    uri = train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else "file"


def check_tracking(train: TrainConfig) -> list[str]:
    """``location: message`` lines when ``train.tracking`` needs a package that is not installed
    (found without importing it: mlflow's import alone takes a second)."""
    if train.tracking != "mlflow":
        return []
    needed = ["mlflow"]
    if tracking_scheme(train) in DATABASE_SCHEMES:
        needed += ["sqlalchemy", "alembic"]  # mlflow-skinny leaves out what its database stores need
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return []
    return [f"train.tracking: mlflow needs the MLflow extra, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. "
            f"Install it with {MLFLOW_INSTALL}, or set train.tracking=none."]

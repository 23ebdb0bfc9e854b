"""Base class for every options model (config sections and plugin options)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _bool_as_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a boolean where ``annotation`` wants an int or a float (YAML's
    ``true`` would otherwise become 1 / 1.0), looking into Optional, Annotated, lists and dicts."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _bool_as_number(args[0], value)
    if origin in (typing.Union, types.UnionType):
        if bool in args or typing.Any in args:
            return False
        return any(_bool_as_number(a, value) for a in args)
    if isinstance(value, bool):
        return annotation in (int, float)
    if origin in (list, tuple, set, frozenset, typing.Sequence) and isinstance(value, (list, tuple)) and args:
        inner = args[0]
        return any(_bool_as_number(inner, v) for v in value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(_bool_as_number(args[1], v) for v in value.values())
    return False


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, so a misspelt option is an error; booleans
    where a number is wanted (``lr: true``) and non-finite floats (``.inf``, ``.nan``) are
    refused too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _bool_as_number(field.annotation, value):
            raise ValueError("expected a number, not a boolean (true / false); write the number")
        return value

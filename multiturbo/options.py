"""Base class for every options model (config sections and plugin options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, so a misspelt option is an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

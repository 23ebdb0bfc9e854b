"""The version of multiturbo (recorded in every run.json; pyproject.toml holds the same)."""

__version__ = "0.1.0"

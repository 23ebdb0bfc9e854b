"""Manifests: CSV or JSONL tables of items, one row per item (docs/datasets.md).

The core reads them for prediction (``multiturbo predict / evaluate / embed``); the
``manifest`` data set plugin reads its training data with the same function.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DataError


def _read_csv(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"The manifest {path} is empty: it needs a header row and at least one row.")
    header = [h.strip() for h in header]
    dup = sorted(h for h, n in Counter(header).items() if n > 1)
    if dup:
        raise DataError(f"The manifest {path} repeats the column(s) {dup} in its header {header}. Rename them.")
    for values in reader:
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"The manifest {path}, line {reader.line_num}, has {len(values)} fields but the header has "
                f"{len(header)} ({header}). Quote fields that contain commas."
            )
        rows.append((reader.line_num, dict(zip(header, values))))
    if not rows:
        raise DataError(f"The manifest {path} has no rows. Add one row per item.")
    return header, rows


def read_manifest(path: Path, fmt: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(column names, [(line number, row)]) of a CSV or JSONL manifest, with clear errors."""
    if not path.is_file():
        raise DataError(f"The manifest {path} does not exist. Set the data set option `path` to your CSV or JSONL file.")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the manifest {path} ({exc}). Save it as UTF-8 text.") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if fmt == "csv":
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a cell of any size (a long transcript) reads
        try:
            return _read_csv(path, text)
        except csv.Error as exc:
            raise DataError(f"The manifest {path} is not valid CSV ({exc}). Save it as plain CSV text with a header row.") from None
    else:
        columns, seen = [], set()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue

            def no_duplicates(pairs: list[tuple[str, Any]], n: int = n) -> dict[str, Any]:
                keys = [k for k, _ in pairs]
                dup = sorted(k for k, c in Counter(keys).items() if c > 1)
                if dup:
                    raise DataError(f"The manifest {path}, line {n}, repeats the key(s) {dup}. Keep one of each.")
                return dict(pairs)

            try:
                row = json.loads(line, object_pairs_hook=no_duplicates)
            except json.JSONDecodeError as exc:
                raise DataError(f"The manifest {path}, line {n}, is not valid JSON ({exc.msg}). Write one JSON object per line.") from None
            if not isinstance(row, dict):
                raise DataError(f"The manifest {path}, line {n}, is not a JSON object. Write one object per line.")
            for k in row:
                if k not in seen:
                    seen.add(k)
                    columns.append(k)
            rows.append((n, row))
    if not rows:
        raise DataError(f"The manifest {path} has no rows. Add one row per item.")
    return columns, rows

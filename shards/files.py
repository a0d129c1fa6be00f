"""File helpers every layer shares: atomic writes, JSON of numpy values, sha256 of a file."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def atomic_write_text(path, text: str) -> None:
    """Write `path` through a temporary sibling and a rename: a reader (or a resumed run) sees
    the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path, data, **json_options) -> None:
    """atomic_write_text of json.dumps(data) (indent 1, sorted keys, numpy values as JSON types,
    unless `json_options` say otherwise)."""
    atomic_write_text(path, json.dumps(data, **({"indent": 1, "sort_keys": True, "default": json_default}
                                                 | json_options)))


def json_default(o):
    """json.dumps `default`: numpy scalars and arrays as JSON numbers and lists, paths as strings."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

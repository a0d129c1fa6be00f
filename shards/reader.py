"""Reading shards from Python (tools, tests, evaluation bookkeeping). Training and evaluation
input goes through the DALI pipelines instead."""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Iterator

import braceexpand
import webdataset as wds

from .schema import Sample, SampleError, decode_members
from .writer import MANIFEST


def list_shards(path) -> list[Path]:
    """A shard file, a directory of shards (`*.tar`, sorted), or a brace/glob pattern."""
    path = str(path)
    # A brace list of hundreds of shards is longer than a file name may be: never stat it whole.
    if not _is_pattern(path) and Path(path).is_dir():
        found = sorted(Path(path).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in {path}")
        return found
    found = []
    for p in braceexpand.braceexpand(path):
        found += [Path(x) for x in sorted(glob.glob(p))] if any(c in p for c in "*?[") else [Path(p)]
    missing = [p for p in found if not p.exists()]
    if missing or not found:
        raise FileNotFoundError(f"shard not found: {missing[0] if missing else path}")
    return found


def _is_pattern(path: str) -> bool:
    return any(c in path for c in "{*?[")


def index_path(shard: Path) -> Path:
    return shard.with_suffix(".idx")


def read_manifest(path) -> dict:
    """manifest.json of a shard directory (or of the directory holding a shard file)."""
    p = Path(path)
    p = p.parent if _is_pattern(str(path)) or not p.is_dir() else p
    m = p / MANIFEST
    if not m.exists():
        raise FileNotFoundError(f"{m} missing: the conversion did not finish (rerun it to resume)")
    return json.loads(m.read_text())


def iter_samples(path, decode: bool = True) -> Iterator[Sample | dict]:
    """Yield every sample of the shards at `path` in storage order, decoded to `Sample`
    (or the raw {ext: bytes} dict with `__key__`/`__url__` when decode=False)."""
    urls = [str(p) for p in list_shards(path)]
    # every sample on every rank: iter_samples is no per-rank loader (nodesplitter=None, else
    # webdataset refuses to run once torch.distributed has more than one rank)
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None)
    for raw in ds:
        if not decode:
            yield raw
            continue
        key = raw["__key__"]
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        try:
            yield decode_members(key, members)
        except SampleError as e:
            raise SampleError(str(e), file=raw.get("__url__")) from None

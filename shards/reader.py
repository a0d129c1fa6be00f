"""Reading shards from Python (tools, tests, evaluation bookkeeping). Training and evaluation
input goes through the DALI pipelines instead."""
from __future__ import annotations

import glob
import json
import tarfile
from pathlib import Path
from typing import Iterator

import braceexpand
import webdataset as wds

from .files import sha256_file
from .schema import MANIFEST, Sample, SampleError, decode_members


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


def tar_samples(path):
    """(key, {ext: TarInfo}, open tarfile) per sample of one shard, in storage order: a sample's
    members are adjacent and share the key before the first dot (how DALI's index groups them).
    A tar that cannot be read raises SampleError naming it."""
    try:
        with tarfile.open(path) as tf:
            key, members = None, {}
            for m in tf:
                if not m.isfile():
                    continue
                base, ext = m.name.split(".", 1) if "." in m.name else (m.name, "")
                if base != key and key is not None:
                    yield key, members, tf
                    members = {}
                key = base
                members[ext] = m
            if key is not None:
                yield key, members, tf
    except tarfile.TarError as e:
        raise SampleError(f"unreadable shard (corrupt or truncated tar): {e}", file=str(path)) from None


def check_manifest(path) -> tuple[dict, list[Path]]:
    """The manifest of the shard directory `path` and its shard files, once the files on disk are
    exactly those the manifest lists and each has the recorded sha256; SampleError otherwise."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
        files = list_shards(path) if manifest.get("shards") else []
    except FileNotFoundError as e:
        raise SampleError(str(e), file=str(path)) from None
    listed = {s["file"]: s for s in manifest.get("shards", [])}
    on_disk = {f.name for f in files}
    if on_disk != set(listed):
        raise SampleError(f"shards on disk {sorted(on_disk ^ set(listed))} differ from the manifest", file=str(path))
    for f in files:
        if sha256_file(f) != listed[f.name]["sha256"]:
            raise SampleError("sha256 differs from manifest.json: the shard is corrupt or was changed", file=str(f))
    return manifest, files

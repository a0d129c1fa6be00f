"""Writing shards: bounded tar files, atomic finalise, DALI indexes, manifest, resume.

A shard is written as `<name>-%06d.tar.tmp`, then its DALI index, then renamed to `.tar`: a
killed run never leaves a partial shard under a final name. `progress.json` (rewritten
atomically after every finalised shard) records how many input items each complete shard
consumed, so a rerun skips exactly those items and writes byte-identical remaining shards:
shard contents are a pure function of the item sequence (fixed tar headers, deterministic
encoding, boundaries from count and byte limits).
"""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_text, sha256_file
from .reader import tar_samples
from .schema import MANIFEST, MEMBER_ORDER, SCHEMA_VERSION, encode_sample

PROGRESS = "progress.json"


def index_line(entries: list[tuple[str, int, int, str]]) -> str:
    """One sample's DALI index line: `<ext> <offset> <size> <member name>` per member."""
    return " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in entries)


def index_lines(tar_path) -> list[str]:
    """The lines of a tar's DALI index (format v1.2 of DALI's wds2idx): a header, then one line
    per sample, members grouped by key in tar order."""
    samples = [[(ext, m.offset_data, m.size, m.name) for ext, m in members.items()]
               for _, members, _ in tar_samples(tar_path)]
    return [f"v1.2 {len(samples)}"] + [index_line(s) for s in samples]


def write_dali_index(tar_path: Path, index_path: Path) -> int:
    """Index an existing tar. Returns the sample count."""
    lines = index_lines(tar_path)
    atomic_write_text(index_path, "".join(line + "\n" for line in lines))
    return len(lines) - 1


@dataclass
class ShardRecord:
    file: str
    index: str
    count: int
    bytes: int
    sha256: str
    items_end: int                      # input items consumed up to the end of this shard
    skipped: list = field(default_factory=list)


class ShardWriter:
    """Append encoded samples ({ext: bytes}); shards roll over at `max_count` samples or
    `max_bytes` bytes. Use as a context manager or call `close()` to finalise."""

    def __init__(self, out_dir, *, name: str = "shard", max_count: int = 2000,
                 max_bytes: int = 512 << 20, manifest_extra: dict | None = None,
                 command: list[str] | None = None):
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.max_count, self.max_bytes = name, max_count, max_bytes
        self.manifest_extra = dict(manifest_extra or {})
        self.command = list(command if command is not None else sys.argv)
        self.records: list[ShardRecord] = []
        self._tar = None
        self._pending_skips: list = []
        self._resume()

    # -- resume -------------------------------------------------------------------------
    def _resume(self) -> None:
        for stale in self.out_dir.glob(f"{self.name}-*.tar.tmp"):
            stale.unlink()
        progress = self.out_dir / PROGRESS
        if not progress.exists():
            for old in self.out_dir.glob(f"{self.name}-*.tar"):
                raise FileExistsError(f"{old} exists but {progress} does not: refusing to mix runs; "
                                      "remove the output directory or point to a new one")
            return
        state = json.loads(progress.read_text())
        for rec in state["shards"]:
            rec = ShardRecord(**rec)
            path = self.out_dir / rec.file
            # Keep the longest prefix of complete, intact shards; anything after is redone.
            if not path.exists() or path.stat().st_size != rec.bytes or not (self.out_dir / rec.index).exists():
                break
            self.records.append(rec)
        for path in self.out_dir.glob(f"{self.name}-*.tar"):
            if path.name not in {r.file for r in self.records}:
                path.unlink()

    @property
    def items_done(self) -> int:
        """Input items already consumed by complete shards: a resumed run starts here."""
        return self.records[-1].items_end if self.records else 0

    @property
    def samples_done(self) -> int:
        return sum(r.count for r in self.records)

    # -- writing ------------------------------------------------------------------------
    def _shard_path(self, i: int) -> Path:
        return self.out_dir / f"{self.name}-{i:06d}.tar"

    def _open(self) -> None:
        path = self._shard_path(len(self.records))
        self._tmp = path.with_name(path.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self._bytes = 0

    def write(self, key: str, members: dict, items_end: int) -> None:
        """Add one sample; `items_end` = number of input items consumed including this one."""
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot")
        size = sum(512 + -(-len(v) // 512) * 512 for v in members.values())
        if self._tar is not None and self._count and self._bytes + size > self.max_bytes:
            self._finalise(items_end - 1)
        if self._tar is None:
            self._open()
        for ext in sorted(members, key=lambda e: MEMBER_ORDER.index(e) if e in MEMBER_ORDER else len(MEMBER_ORDER)):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size
        self._items_end = items_end
        if self._count >= self.max_count:
            self._finalise(items_end)

    def skip(self, item: int, key: str, reason: str) -> None:
        """Record an input item left out (--skip-bad): it goes into the manifest."""
        self._pending_skips.append({"item": item, "key": key, "reason": reason})

    def _finalise(self, items_end: int) -> None:
        self._tar.close()
        self._tar = None
        final = self._shard_path(len(self.records))
        index = final.with_suffix(".idx")
        write_dali_index(self._tmp, index)
        rec = ShardRecord(file=final.name, index=index.name, count=self._count,
                          bytes=self._tmp.stat().st_size, sha256=sha256_file(self._tmp),
                          items_end=items_end, skipped=self._pending_skips)
        os.replace(self._tmp, final)
        self._pending_skips = []
        self.records.append(rec)
        atomic_write_text(self.out_dir / PROGRESS, json.dumps(
            {"shards": [r.__dict__ for r in self.records]}, indent=1))

    def close(self, items_total: int | None = None) -> dict:
        """Finalise the open shard and write manifest.json. Returns the manifest."""
        if self._tar is not None:
            self._finalise(self._items_end if items_total is None else items_total)
        skipped = [s for r in self.records for s in r.skipped] + self._pending_skips
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "samples": self.samples_done,
            "num_shards": len(self.records),
            "shards": [{k: r.__dict__[k] for k in ("file", "index", "count", "bytes", "sha256")}
                       for r in self.records],
            "skipped": skipped,
            "command": self.command,
            **self.manifest_extra,
        }
        atomic_write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        return manifest

    def abort(self) -> None:
        """Stop after an error: complete shards and progress.json stay, the partial one goes."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_samples(out_dir, samples, *, per_shard: int = 2000, name: str = "shard", command: list[str] | None = None) -> Path:
    """Every Sample of `samples` into shards in `out_dir`, one input item each, in order; for
    data made in Python (tests, benchmarks) rather than converted from a dataset."""
    out_dir = Path(out_dir)
    with ShardWriter(out_dir, name=name, max_count=per_shard, command=command) as writer:
        for i, sample in enumerate(samples):
            writer.write(sample.key, encode_sample(sample), i + 1)
    return out_dir

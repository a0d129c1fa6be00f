"""A shard set as DALI's webdataset reader sees it: shard and index paths, sample counts, the
first sample's meta, and the samples left out (--skip-bad-samples) through filtered indexes."""
from __future__ import annotations

import functools
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..reader import index_path, list_shards
from ..schema import JOINT_ORDERS, SampleError, decode_members
from ..writer import index_lines


@dataclass
class ShardSet:
    """A set of shards as DALI's webdataset reader wants them.

    `leave_out` drops samples from the reader's view: it points `index_paths` at copies of the
    .idx files without their lines (DALI reads only what the index lists). Mutable on purpose:
    the streams' pipeline builders hold this object, and rebuild over the filtered index."""
    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...] = ()      # (shard, sample key), in the order left out

    @classmethod
    def at(cls, path) -> "ShardSet":
        shards = list_shards(path)
        for s in shards:
            if not index_path(s).exists():
                raise SampleError("DALI index (.idx) missing: rerun the conversion to rewrite it", file=str(s))
        return cls(tuple(str(s) for s in shards), tuple(str(index_path(s)) for s in shards))

    def count(self, require_ext: str | None = None) -> int:
        """Samples in the set (from the index headers), or those having member `require_ext`."""
        total = 0
        for idx in self.index_paths:
            with open(idx) as f:
                header = f.readline().split()
                if require_ext is None:
                    total += int(header[1])
                else:
                    total += sum(1 for line in f if require_ext in line.split()[0::4])
        return total

    def first_meta(self) -> dict:
        """The json meta of the first sample (joint order and root index are per dataset)."""
        with tarfile.open(self.paths[0]) as tf:
            for m in tf:
                if m.isfile() and m.name.split(".", 1)[-1] == "json":
                    return _json_meta(tf.extractfile(m).read(), self.paths[0], m.name.split(".", 1)[0])
        raise SampleError("no json member in the first shard", file=self.paths[0])

    def num_joints(self) -> tuple[int, int]:
        """(K, root index) from the first sample's meta."""
        meta = self.first_meta()
        order = meta.get("joint_order")
        if order not in JOINT_ORDERS or not JOINT_ORDERS[order]:
            raise SampleError(f"joint order {order!r} has no joints: not a pose dataset", file=self.paths[0])
        return len(JOINT_ORDERS[order]), int(meta.get("root_index") or 0)

    def locate_bad_sample(self) -> None:
        """Raise SampleError naming the first stale index or unreadable sample, if any. Called
        after DALI fails: its errors name the operator, not the file and sample."""
        bad = self.bad_samples()
        if bad:
            raise bad[0]

    def bad_samples(self) -> list[SampleError]:
        """Every sample the reader lists but cannot use, each a SampleError naming its shard and
        key: members past the end of a truncated tar, members that do not decode. A whole-shard
        problem (an index that does not match its tar) is raised at once. Reads every listed
        sample, so it is slow: called only after DALI fails."""
        bad = []
        for tar, idx in zip(self.paths, self.index_paths):
            size = Path(tar).stat().st_size
            samples = _index_samples(idx)
            truncated = {key for key, members in samples if any(o + n > size for _, o, n, _ in members)}
            if not truncated and not self.left_out:   # a filtered index cannot match the tar's listing
                _check_index_matches(tar, idx)
            with open(tar, "rb") as f:
                for key, members in samples:
                    if key in truncated:
                        bad.append(SampleError(f"truncated shard ({size} bytes): the sample's members end past it",
                                               file=tar, sample=key))
                        continue
                    data = {}
                    for ext, offset, length, _ in members:
                        f.seek(offset)
                        data[ext] = f.read(length)
                    try:
                        decode_members(key, data)
                    except SampleError as e:
                        bad.append(SampleError(e.reason, file=tar, sample=key))
        return bad

    def leave_out(self, samples: list[tuple[str, str]]) -> None:
        """From now on the reader skips these (shard, key) samples: each affected shard's index is
        rewritten without them into a private temporary directory."""
        self.left_out = self.left_out + tuple((str(f), str(k)) for f, k in samples if (str(f), str(k)) not in self.left_out)
        dropped: dict[str, set] = {}
        for f, k in self.left_out:
            dropped.setdefault(f, set()).add(k)
        index_paths = []
        for tar, idx in zip(self.paths, self.index_paths):
            original = str(index_path(Path(tar)))
            if tar not in dropped:
                index_paths.append(original)
                continue
            kept = [line for line in Path(original).read_text().splitlines()[1:]
                    if line.split()[3].split(".", 1)[0] not in dropped[tar]]
            filtered = Path(_left_out_dir()) / f"{len(os.listdir(_left_out_dir())):06d}-{Path(original).name}"
            filtered.write_text("\n".join([f"v1.2 {len(kept)}", *kept]) + "\n")
            index_paths.append(str(filtered))
        self.index_paths = tuple(index_paths)


def _index_samples(idx) -> list[tuple[str, list[tuple[str, int, int, str]]]]:
    """A DALI v1.2 index -> [(key, [(ext, offset, size, member name), ...]), ...]."""
    samples = []
    for line in Path(idx).read_text().splitlines()[1:]:
        fields = line.split()
        members = [(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)]
        samples.append((members[0][3].split(".", 1)[0], members))
    return samples


def _check_index_matches(tar: str, idx: str) -> None:
    expected = index_lines(tar)     # SampleError naming the tar when it cannot be read
    if Path(idx).read_text().splitlines() != expected:
        raise SampleError("DALI index does not match the tar (stale index: rerun the conversion)", file=idx)


@functools.lru_cache(maxsize=None)
def _left_out_dir() -> str:
    """This process's directory of filtered indexes (removed at exit; rebuilt from the loader
    state on --resume)."""
    import atexit
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="posemae-left-out-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _json_meta(data: bytes, file: str, key: str) -> dict:
    try:
        return json.loads(data)
    except ValueError as e:
        raise SampleError(f"unreadable json meta: {e}", file=file, sample=key) from None

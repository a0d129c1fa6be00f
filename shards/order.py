"""A global sample order over a shard set: which sample every rank reads at every step, as a
function of (seed, epoch) and the global step only, never of the number of ranks or workers.

    catalog = Catalog.of(path, ["jpg", "mask.png"])  # every sample, from the shards' .idx files
    order = GlobalOrder(len(catalog), seed=0, salt="source")
    plan = BatchPlan(global_batch=4096, world_size=W, micro_batch=64)  # accumulation re-derived
    plan.sample_indices(order, step, micro, rank)   # catalog rows of one micro-batch of one rank

The order. Epoch e is a permutation of all N samples drawn from (seed, salt, e) alone. The run
reads the epochs one after the other as one stream of positions p = e*N + i (sample
`permutation(e)[i]`); global batch (optimizer step) s is the next `global_batch` positions of
that stream, an epoch's last N mod global_batch positions left out, as the per-rank readers drop
a partial batch today. So the data position is the global step, and a run resumed at step s on any
number of ranks reads exactly the samples the original run would have.

The split. Global batch s is dealt rank-major: rank r reads its contiguous share of
global_batch/W positions, micro-batch m of them the m-th run of micro_batch. Only the split (which
rank computes which sample) depends on W; the set of samples in each global batch does not.

Augmentation (`sample_draws`): random numbers per position, so that a sample's random crop and colour
jitter are the same whichever rank draws them (DALI's random operators keep one state per
pipeline, so per rank: a resume on another world size would draw other augmentations).

Evaluation (`eval_rows`): storage order, every sample exactly once; each rank a contiguous block,
padded to the same number of batches, padding marked.

Pure numpy, no DALI: shards.ordered_source feeds DALI from it.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .reader import index_path, list_shards
from .schema import SampleError


# -- every sample of a shard set ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Catalog:
    """Every sample of a shard set in storage order, as the .idx files list it: its shard, its key
    and, per wanted member extension, the member's byte offset and size in the tar (size -1 where
    the sample has no such member). Arrays, not objects: it is pickled to every reader worker."""
    shards: tuple[str, ...]
    exts: tuple[str, ...]
    keys: np.ndarray          # (N,) str
    shard_of: np.ndarray      # (N,) int32, index into `shards`
    offsets: np.ndarray       # (N, E) int64
    sizes: np.ndarray         # (N, E) int64, -1: member missing

    @classmethod
    def of(cls, path, exts) -> "Catalog":
        """The catalog of the shards at `path` (a shard, a directory, a pattern, or a list of
        shard paths) for members `exts`."""
        shards = [str(s) for s in (path if isinstance(path, (list, tuple)) else list_shards(path))]
        exts = tuple(exts)
        keys, shard_of, offsets, sizes = [], [], [], []
        for number, shard in enumerate(shards):
            for key, members in read_index(index_path(Path(shard)), shard):
                keys.append(key)
                shard_of.append(number)
                offsets.append([members.get(e, (0, -1))[0] for e in exts])
                sizes.append([members.get(e, (0, -1))[1] for e in exts])
        if not keys:
            raise SampleError("no samples listed in the shards' .idx files", file=str(path))
        return cls(tuple(shards), exts, np.array(keys), np.array(shard_of, np.int32),
                   np.array(offsets, np.int64).reshape(len(keys), len(exts)),
                   np.array(sizes, np.int64).reshape(len(keys), len(exts)))

    def __len__(self) -> int:
        return len(self.keys)

    def having(self, ext: str) -> "Catalog":
        """The samples that have member `ext` (e.g. the segmentation network's masked samples)."""
        keep = self.sizes[:, self.exts.index(ext)] >= 0
        return Catalog(self.shards, self.exts, self.keys[keep], self.shard_of[keep], self.offsets[keep],
                       self.sizes[keep])

    def rows_of(self, samples) -> frozenset:
        """The rows of (shard, key) pairs (those of other shard sets ignored)."""
        wanted = {(str(f), str(k)) for f, k in samples}
        return frozenset(int(i) for i in range(len(self.keys))
                         if (self.shards[self.shard_of[i]], str(self.keys[i])) in wanted) if wanted else frozenset()

    def check_sizes(self) -> None:
        """Raise SampleError naming the shard and the first sample whose members end past the end
        of its tar (a truncated shard): cheap, one stat per shard."""
        ends = np.where(self.sizes >= 0, self.offsets + self.sizes, 0).max(axis=1)
        for number, shard in enumerate(self.shards):
            size = Path(shard).stat().st_size
            past = np.flatnonzero((self.shard_of == number) & (ends > size))
            if len(past):
                raise SampleError(f"truncated shard ({size} bytes): the sample's members end past it",
                                  file=shard, sample=str(self.keys[past[0]]))


def read_index(idx: Path, shard: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """A DALI v1.2 index (shards.writer.index_lines) -> [(key, {ext: (offset, size)})], checked:
    a malformed line or a count that differs from the header is one error naming the index."""
    if not idx.exists():
        raise SampleError("DALI index (.idx) missing: rerun the conversion to rewrite it", file=shard)
    lines = idx.read_text().splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != "v1.2" or not header[1].isdigit():
        raise SampleError(f"not a DALI v1.2 index (header {lines[0] if lines else ''!r})", file=str(idx))
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise SampleError(f"malformed index line {number}: {line!r}", file=str(idx))
        members = {}
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i:i + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise SampleError(f"malformed index line {number}: {line!r}", file=str(idx))
            members[ext] = (int(offset), int(size))
        samples.append((fields[3].split(".", 1)[0], members))
    if len(samples) != int(header[1]):
        raise SampleError(f"index lists {len(samples)} samples, its header {header[1]}: rerun the conversion",
                          file=str(idx))
    return samples


# -- the order ------------------------------------------------------------------------------------
def _stream_seed(seed: int, salt: str) -> list[int]:
    """numpy SeedSequence entropy for (seed, purpose): crc32, as Python's hash() is salted per process."""
    return [int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode())]


@dataclass(frozen=True)
class GlobalOrder:
    """The order of `size` samples: epoch e is the permutation drawn from (seed, salt, e). `salt`
    separates the streams of one run (source, target, backgrounds)."""
    size: int
    seed: int = 0
    salt: str = ""

    def __post_init__(self):
        if self.size < 1:
            raise ValueError("an order needs at least one sample")

    def permutation(self, epoch: int) -> np.ndarray:
        return _permutation(self.size, self.seed, self.salt, int(epoch))

    def row_at(self, position: int) -> int:
        """The catalog row at one stream position (the readers' per-sample path)."""
        epoch, within = divmod(int(position), self.size)
        return int(self.permutation(epoch)[within])

    def sample_at(self, positions) -> np.ndarray:
        """Catalog rows at stream positions p = epoch * size + i."""
        positions = np.asarray(positions, np.int64)
        epochs, within = np.divmod(positions, self.size)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = self.permutation(int(epoch))[within[chosen]]
        return out


@functools.lru_cache(maxsize=4)
def _permutation(size: int, seed: int, salt: str, epoch: int) -> np.ndarray:
    # PCG64 from a SeedSequence: the same permutation on every machine and numpy version that
    # keeps Generator.permutation's stream (numpy's policy for Generator methods).
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*_stream_seed(seed, salt), epoch])))
    permutation = rng.permutation(size)
    permutation.flags.writeable = False
    return permutation


def sample_draws(seed: int, salt: str, positions, count: int) -> np.ndarray:
    """(len(positions), count) U[0, 1) float32 draws, row i those of stream position positions[i]
    (its augmentation): the same on any rank and worker. A counter-based hash (SplitMix64's
    finaliser) of (seed, salt, position, k), in uint64 arithmetic that wraps as the hash wants."""
    seed_word, salt_word = _stream_seed(seed, salt)
    key = np.uint64((seed_word << 32) | salt_word)
    base = np.asarray(positions, np.int64).astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
    x = key ^ (base + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)  # top 24 bits: exact


# -- global batches -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    """Global batch = micro_batch x accumulation x world_size; the global batch and the micro-batch
    are the run's, the accumulation is re-derived for each world size."""
    global_batch: int
    world_size: int
    micro_batch: int

    def __post_init__(self):
        if min(self.global_batch, self.world_size, self.micro_batch) < 1:
            raise ValueError("global batch, world size and micro-batch must be positive")
        if self.global_batch % (self.world_size * self.micro_batch):
            raise ValueError(f"global batch {self.global_batch} is not a multiple of {self.world_size} ranks x "
                             f"micro-batch {self.micro_batch}: choose a micro-batch that divides "
                             f"{self.global_batch // self.world_size if self.global_batch % self.world_size == 0 else 'it'}")

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def steps_per_epoch(self, size: int) -> int:
        """Global batches per epoch of `size` samples (the rest of each epoch is left out)."""
        steps = size // self.global_batch
        if steps < 1:
            raise ValueError(f"{size} samples make no global batch of {self.global_batch}")
        return steps

    def positions(self, size: int, step: int, micro: int, rank: int) -> np.ndarray:
        """Stream positions of micro-batch `micro` of optimizer step `step` (from 0) on `rank`."""
        if not (0 <= micro < self.accumulation and 0 <= rank < self.world_size):
            raise ValueError(f"micro {micro} / rank {rank} outside {self.accumulation} x {self.world_size}")
        epoch, within = divmod(int(step), self.steps_per_epoch(size))
        first = epoch * size + within * self.global_batch + rank * self.per_rank + micro * self.micro_batch
        return np.arange(first, first + self.micro_batch, dtype=np.int64)

    def global_positions(self, size: int, step: int) -> np.ndarray:
        """All stream positions of optimizer step `step`, on every rank."""
        epoch, within = divmod(int(step), self.steps_per_epoch(size))
        first = epoch * size + within * self.global_batch
        return np.arange(first, first + self.global_batch, dtype=np.int64)

    def sample_indices(self, order: GlobalOrder, step: int, micro: int, rank: int) -> np.ndarray:
        return order.sample_at(self.positions(order.size, step, micro, rank))


# -- evaluation -----------------------------------------------------------------------------------
def eval_rows(size: int, world_size: int, rank: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's evaluation batches over `size` samples in storage order: [(rows, valid)], every
    sample on exactly one rank exactly once. Ranks hold contiguous blocks (sizes differ by at most
    one) and the same number of batches (a collective per batch must not hang); padding repeats the
    block's last row (or row 0) with valid False."""
    if batch < 1 or not 0 <= rank < world_size:
        raise ValueError("batch must be positive and rank in [0, world_size)")
    bounds = [size * r // world_size for r in range(world_size + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    longest = max(bounds[r + 1] - bounds[r] for r in range(world_size))
    batches = max(1, -(-longest // batch))
    rows = np.arange(start, start + batches * batch, dtype=np.int64)
    valid = rows < stop
    rows[~valid] = stop - 1 if stop > start else 0
    return [(rows[i * batch:(i + 1) * batch], valid[i * batch:(i + 1) * batch]) for i in range(batches)]

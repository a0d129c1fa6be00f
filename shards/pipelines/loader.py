"""`Loader`: drives one or more DALI pipelines (`Stream`s) and hands out batches of torch
tensors, with a position that checkpoints and resumes mid-epoch, and bad samples left out on
request."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from ..schema import SampleError
from .shardset import ShardSet


LOADER_STATE_FORMAT = "posemae.loader/2"


@dataclass
class Stream:
    """One DALI pipeline contributing `batch_size` samples to every batch.

    `build(start)` makes the pipeline whose first batch is this stream's batch number `start`
    (0: the run's first): its reader is a shards.ordered_source callback, so any position is
    reached by arithmetic, without a DALI checkpoint. `names` name its outputs in order ('key'
    is the sample key as bytes); `constants` are per-stream outputs added in Python (e.g. is_target)."""
    build: Callable[[int], object]
    batch_size: int
    names: tuple[str, ...]
    shards: list[ShardSet]
    constants: dict | None = None


class Loader:
    """Iterable over batches, dicts of torch tensors (on the GPU when DALI runs there) and
    `key`, a list of sample keys. `len(loader)` batches (micro-batches of this rank) make an
    epoch; iterating yields what is left of the current epoch, then `epoch` advances. The
    readers stream on without a break between epochs.

    Training streams read the global sample order (shards.order): micro-batch m of optimizer
    step s on rank r is a function of (seed, s, m, r) and the plan, so the loader's position is
    the global step. `state_dict()` (JSON-able, for the checkpoint) holds that step and the
    samples left out; a Loader built with the same data and seed, on any world size with the
    same global batch, continues with the samples the saved one would have read next.

    A sample DALI cannot read (a corrupted JPEG, a truncated tar) raises one SampleError naming
    the shard and the sample key. With `skip_bad_samples` set (the trainers' --skip-bad-samples)
    the loader instead leaves every bad sample of that stream's shards out (ShardSet.leave_out
    records them), rebuilds the streams reading them at the batch they were at, and goes on; a
    left-out sample's place in the order is taken by the next good sample in storage order
    (the same on any world size). `drain_skipped()` hands the skips to the trainer to count and
    log. The left-out samples are part of the state, so a resume reads what the interrupted run
    would have."""

    def __init__(self, streams: list[Stream], batches_per_epoch: int, *, fingerprint: dict, accumulation: int = 1,
                 valid_per_epoch: int | None = None):
        if batches_per_epoch < 1:
            raise ValueError("fewer samples on this rank than one batch: lower the batch size or the world size")
        self.streams = streams
        self.batches_per_epoch = batches_per_epoch
        self.fingerprint = fingerprint              # what must match on resume: data, seed, global batch
        self.accumulation = accumulation            # micro-batches per optimizer step on this world size
        self.valid_per_epoch = valid_per_epoch      # evaluation: samples past it are padding
        self.epoch = 0
        self.step = 0                               # batches already handed out in this epoch
        self._pipes = None
        self._produced = [0] * len(streams)         # batches each stream's pipelines have returned
        self.skip_bad_samples = False
        self._skipped: list[dict] = []              # left out since the last drain_skipped()

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def consumed(self) -> int:
        """Batches handed out since the run's start."""
        return self.epoch * self.batches_per_epoch + self.step

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        global_step, micro = divmod(self.consumed, self.accumulation)
        return {
            "format": LOADER_STATE_FORMAT, "global_step": global_step, "micro": micro,
            "accumulation": self.accumulation, "fingerprint": self.fingerprint,
            "left_out": [[list(x) for x in shards.left_out] for shards in self._shard_sets()],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != LOADER_STATE_FORMAT:
            raise ValueError(f"not a loader state of this version (format {state.get('format')!r}, "
                             f"expected {LOADER_STATE_FORMAT!r})")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"loader state was saved with {state['fingerprint']}, this loader is {self.fingerprint}")
        micro = int(state["micro"])
        if micro and int(state["accumulation"]) != self.accumulation:
            raise ValueError(f"loader state saved {micro} micro-batches into a step of {state['accumulation']}; "
                             f"this loader accumulates {self.accumulation}: resume from a step boundary")
        consumed = int(state["global_step"]) * self.accumulation + micro
        self.epoch, self.step = divmod(consumed, self.batches_per_epoch)
        for shards, left_out in zip(self._shard_sets(), state.get("left_out") or []):
            if left_out:
                shards.leave_out([tuple(x) for x in left_out])
        self._pipes = None   # rebuilt at the restored position on the next iteration
        self._produced = [consumed] * len(self.streams)

    def _shard_sets(self) -> list[ShardSet]:
        """Every distinct ShardSet the streams read (backgrounds may be shared), in order."""
        seen = []
        for stream in self.streams:
            for shards in stream.shards:
                if not any(shards is s for s in seen):
                    seen.append(shards)
        return seen

    def drain_skipped(self) -> list[dict]:
        """Samples left out since the last call: {"file", "sample", "error", "epoch", "step"}."""
        skipped, self._skipped = self._skipped, []
        return skipped

    # -- iteration -----------------------------------------------------------------------
    def _build(self):
        self._pipes = [s.build(start) for s, start in zip(self.streams, self._produced)]
        for p in self._pipes:
            build_quietly(p)

    def __iter__(self):
        if self._pipes is None:
            self._build()
        while self.step < self.batches_per_epoch:
            batch = self._next_batch()
            self.step += 1
            yield batch
        self.epoch += 1
        self.step = 0

    def _run(self, i: int):
        try:
            out = self._pipes[i].run()
        except Exception:
            # DALI names the operator (or the reader worker's exception), not always the sample:
            # re-read this stream's shards in Python (slow, but only on failure) to name the file
            # and sample. Nothing found (not a data error, e.g. out of memory): the error goes up.
            bad = [e for shards in self.streams[i].shards for e in shards.bad_samples()]
            if not bad:
                raise
            if not self.skip_bad_samples:
                first = bad[0]
                raise SampleError(f"{first.reason} [{len(bad)} bad sample(s) in these shards; --skip-bad-samples "
                                  "leaves them out and goes on]", file=first.file, sample=first.sample) from None
            self._leave_out(bad)
            out = self._pipes[i].run()
        self._produced[i] += 1
        return out

    def _leave_out(self, bad: list[SampleError]) -> None:
        """Leave `bad` out of their shard sets and rebuild every stream reading one of them at
        the batch it was to return next."""
        changed = []
        for shards in self._shard_sets():
            mine = [(e.file, e.sample) for e in bad if e.file in shards.paths]
            if mine:
                shards.leave_out(mine)
                changed.append(shards)
        self._skipped += [{"file": e.file, "sample": e.sample, "error": e.reason, "epoch": self.epoch,
                           "step": self.step} for e in bad]
        for j, stream in enumerate(self.streams):
            if any(shards is c for shards in stream.shards for c in changed):
                self._pipes[j] = None                  # frees the old pipeline's threads and workers first
                self._pipes[j] = stream.build(self._produced[j])
                build_quietly(self._pipes[j])

    def _next_batch(self) -> dict:
        outputs = [self._run(i) for i in range(len(self.streams))]
        total = sum(s.batch_size for s in self.streams)
        batch = {}
        for name in self.streams[0].names:
            lists = [out[s.names.index(name)] for s, out in zip(self.streams, outputs)]
            batch[name] = keys_of(lists) if name == "key" else stack_batches(lists, total)
        for name in (self.streams[0].constants or {}):
            batch[name] = torch.cat([torch.full((s.batch_size,), s.constants[name]) for s in self.streams])
            batch[name] = batch[name].to(device_of(batch))
        if self.valid_per_epoch is not None:
            position = self.step * total + torch.arange(total)
            batch["valid"] = (position < self.valid_per_epoch).to(device_of(batch))
        return batch


def build_quietly(pipe) -> None:
    """pipe.build() without DALI's warning about reader outputs a pipeline leaves unused (the
    position, a label the stage ignores: a few bytes per sample, not worth a callback each)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The external source node .* not used")
        pipe.build()


def device_of(batch: dict) -> torch.device:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def stack_batches(lists, total: int) -> torch.Tensor:
    """DALI TensorLists (one per stream) -> one torch tensor, copied straight into place."""
    dense = [tl.as_tensor() for tl in lists]
    first = dense[0]
    dtype = to_torch_type[first.dtype]
    gpu = isinstance(first, TensorGPU)
    device = torch.device("cuda", first.device_id()) if gpu else torch.device("cpu")
    out = torch.empty([total, *first.shape()[1:]], dtype=dtype, device=device)
    stream = torch.cuda.current_stream(device) if gpu else None
    offset = 0
    for t in dense:
        n = t.shape()[0]
        feed_ndarray(t, out[offset:offset + n], cuda_stream=stream)
        offset += n
    return out


def keys_of(lists) -> list[str]:
    """The readers' key outputs (uint8 bytes per sample, zero-padded) -> the sample keys."""
    return [bytes(np.asarray(tl.at(i))).rstrip(b"\0").decode() for tl in lists for i in range(len(tl))]


def per_rank_min(total: int, world_size: int) -> int:
    """Samples of the smallest rank's part: DALI splits [N*r/n, N*(r+1)/n)."""
    return total // world_size


def rank_share(total: int, rank: int, world_size: int) -> int:
    return total * (rank + 1) // world_size - total * rank // world_size

"""`Loader`: drives one or more DALI pipelines (`Stream`s) and hands out batches of torch
tensors, with a position that checkpoints and resumes mid-epoch, and bad samples left out on
request."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from ..schema import SampleError
from .shardset import ShardSet


LOADER_STATE_FORMAT = "posemae.loader/1"


@dataclass
class Stream:
    """One DALI pipeline contributing `batch_size` samples to every batch.

    `build(checkpoint)` makes the pipeline (restored from a DALI checkpoint when given);
    `names` name its outputs in order ('key' is the source info, turned into strings);
    `constants` are per-stream outputs added in Python (e.g. is_target)."""
    build: Callable[[bytes | None], object]
    batch_size: int
    names: tuple[str, ...]
    shards: list[ShardSet]
    constants: dict | None = None


class Loader:
    """Iterable over batches, dicts of torch tensors (on the GPU when DALI runs there) and
    `key`, a list of sample keys. `len(loader)` batches make an epoch on this rank; iterating
    yields what is left of the current epoch, then `epoch` advances. The readers stream on
    without a break between epochs (training) unless the pipelines pad epochs (evaluation).

    `state_dict()` is JSON-able (DALI checkpoints as base64) for DeepSpeed's client_state; a
    Loader built with the same arguments and given it with `load_state_dict` continues with the
    very batches the saved one would have produced next, mid-epoch included.

    A sample DALI cannot read (a corrupted JPEG, a truncated tar) raises one SampleError naming
    the shard and the sample key. With `skip_bad_samples` set (the trainers' --skip-bad-samples)
    the loader instead leaves every bad sample of that stream's shards out (ShardSet.leave_out),
    rebuilds the streams reading them and goes on; `drain_skipped()` hands the skips to the
    trainer to count and log. DALI cannot drop a sample from a running reader, so a rebuilt
    stream starts its reader's order afresh over the remaining samples (the epoch and step
    counts go on); the left-out samples are part of the state, so a resume reads what the
    interrupted run would have."""

    def __init__(self, streams: list[Stream], batches_per_epoch: int, *, fingerprint: dict,
                 valid_per_epoch: int | None = None):
        if batches_per_epoch < 1:
            raise ValueError("fewer samples on this rank than one batch: lower the batch size or the world size")
        self.streams = streams
        self.batches_per_epoch = batches_per_epoch
        self.fingerprint = fingerprint
        self.valid_per_epoch = valid_per_epoch      # evaluation: samples past it are padding
        self.epoch = 0
        self.step = 0                               # batches already handed out in this epoch
        self._pipes = None
        self._checkpoints = None
        self.skip_bad_samples = False
        self._skipped: list[dict] = []              # left out since the last drain_skipped()

    def __len__(self) -> int:
        return self.batches_per_epoch

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._pipes is not None:
            checkpoints = [p.checkpoint() for p in self._pipes]
        else:
            checkpoints = self._checkpoints
        return {
            "format": LOADER_STATE_FORMAT, "epoch": self.epoch, "step": self.step,
            "fingerprint": self.fingerprint,
            "pipelines": None if checkpoints is None else [base64.b64encode(c).decode("ascii") for c in checkpoints],
            "left_out": [[list(x) for x in shards.left_out] for shards in self._shard_sets()],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != LOADER_STATE_FORMAT:
            raise ValueError(f"not a loader state (format {state.get('format')!r})")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"loader state was saved with {state['fingerprint']}, this loader is {self.fingerprint}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._checkpoints = None if state["pipelines"] is None else [base64.b64decode(c) for c in state["pipelines"]]
        # the DALI checkpoints were taken over the filtered indexes: filter the same way first
        for shards, left_out in zip(self._shard_sets(), state.get("left_out") or []):
            if left_out:
                shards.leave_out([tuple(x) for x in left_out])
        self._pipes = None   # rebuilt from the checkpoints on the next iteration

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
        checkpoints = self._checkpoints or [None] * len(self.streams)
        self._pipes = [s.build(c) for s, c in zip(self.streams, checkpoints)]
        for p in self._pipes:
            p.build()

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
            return self._pipes[i].run()
        except RuntimeError:
            # DALI names the operator, not the sample: re-read this stream's shards in Python
            # (slow, but only on failure) to name the file and sample. Nothing found (not a data
            # error, e.g. out of memory): DALI's own error goes up.
            bad = [e for shards in self.streams[i].shards for e in shards.bad_samples()]
            if not bad:
                raise
            if not self.skip_bad_samples:
                first = bad[0]
                raise SampleError(f"{first.reason} [{len(bad)} bad sample(s) in these shards; --skip-bad-samples "
                                  "leaves them out and goes on]", file=first.file, sample=first.sample) from None
        self._leave_out(bad)
        return self._pipes[i].run()

    def _leave_out(self, bad: list[SampleError]) -> None:
        """Leave `bad` out of their shard sets and rebuild every stream reading one of them."""
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
                self._pipes[j] = None                  # frees the old pipeline's threads first
                self._pipes[j] = stream.build(None)
                self._pipes[j].build()

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
    """source_info '<tar>:<offset>:<member>' -> the member's sample key."""
    keys = []
    for tl in lists:
        for i in range(len(tl)):
            info = bytes(np.asarray(tl.at(i))).decode()
            keys.append(info.rsplit(":", 1)[-1].split(".", 1)[0])
    return keys


def per_rank_min(total: int, world_size: int) -> int:
    """Samples of the smallest rank's part: DALI splits [N*r/n, N*(r+1)/n)."""
    return total // world_size


def rank_share(total: int, rank: int, world_size: int) -> int:
    return total * (rank + 1) // world_size - total * rank // world_size

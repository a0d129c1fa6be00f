"""DALI input in the global order (shards.order): an `fn.external_source` whose parallel worker
processes read each sample's member bytes straight from the tars at the offsets the .idx files
give, in the order the BatchPlan deals to this rank, a whole micro-batch per worker call. DALI
decodes and augments as before; only the reader changes (bench/data_pipeline.py measures the
two readers in the same graph).

    source = RankSource(Catalog.of(path, ["jpg", "mask.png"]), GlobalOrder(n, seed, "source"),
                        BatchPlan(global_batch, world_size, micro_batch), rank, start_step=step,
                        augment=Augment(), input_size=256)
    jpg, png, key, affine, mean, std = ordered_reader(source)       # inside a pipeline_def
    matrix = crop_to_input_from(image_size(jpg), affine)
    pipe = my_pipeline(batch_size=plan.micro_batch, **worker_kwargs(num_workers))

Outputs per micro-batch, in this order (`RankSource.names`): each member's bytes (uint8, empty
where the sample lacks it, as the webdataset reader's missing_component_behavior="empty"); the
key (uint8 bytes, zero-padded to the batch's longest: `key_strings`); with `draws` > 0, that
many U[0, 1) floats per sample for the pipeline's own use; with an `augment`, the sample's
augmentation as numbers (`augment_parameters`: the crop's affine and the colour-jittered
normalisation); with `backgrounds`, the sample's background image bytes and whether to swap it
in (bool; bytes are read only where it is true).

Every random number comes from the sample's position in the global order (shards.order
.sample_draws): the same whichever rank or worker reads it, so a resume on another world size
draws the augmentations the original run drew. The augmentation is computed here, in numpy, a
batch at a time, not with DALI arithmetic operators: some fifty per-sample operators cost more
than the reading (measured with bench/data_pipeline.py's reader rows).

Resume needs no DALI checkpoint: build the pipeline with start_step = the global step.

Workers start with `spawn`, not `fork`: a forked worker would inherit the rank's gloo sockets, so
a rank killed with kill -9 would leave its connections open (held by its orphaned workers) and
the other ranks waiting in a collective until --dist-timeout.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np
from nvidia.dali import fn

from .order import BatchPlan, Catalog, GlobalOrder, sample_draws
from .schema import EXT_MASK, SampleError


# the augmentation's draws come first in every position's draws, then the pipeline's own
AUGMENT_DRAWS = 9     # zoom, angle, shift x, shift y, brightness, contrast, 3 channel gains


@dataclass
class RankSource:
    """The batch callback of one rank's external source (picklable: it goes to the workers)."""
    catalog: Catalog
    order: GlobalOrder
    plan: BatchPlan
    rank: int
    start_step: int = 0
    # U[0, 1) draws per sample handed to the pipeline (e.g. the background coin and window)
    draws: int = 0
    # an Augment (shards.pipelines.augment) and the input side: the sample's augmentation as
    # numbers, see augment_parameters; None: no augmentation outputs
    augment: object = None
    input_size: int = 0
    # micro-batches past start_step's first (a stream rebuilt mid-step after a bad sample)
    start_micro: int = 0
    # catalog rows left out (--skip-bad-samples): each is replaced by the next good row in storage
    # order, a function of the left-out set alone, so any world size reads the same substitute
    skip: frozenset = frozenset()
    # the pre-training background of position p: backgrounds.catalog row background_order.row_at(p),
    # swapped in where the sample has a mask member and its first own draw is below background_p
    # (the "swap" output); only those are read, the others come out as empty bytes
    backgrounds: Catalog | None = None
    background_order: GlobalOrder | None = None
    background_skip: frozenset = frozenset()
    background_p: float = 1.0
    # numpy dtype per member (the webdataset reader's `dtypes`): raw float members come out as
    # float32 arrays, not bytes; None: every member uint8
    dtypes: tuple | None = None
    _files: dict = field(default_factory=dict, repr=False, compare=False)   # per worker: shard -> fd

    def __post_init__(self):
        if self.order.size != len(self.catalog):
            raise ValueError(f"order over {self.order.size} samples, catalog of {len(self.catalog)}")
        if self.augment is not None and self.input_size < 1:
            raise ValueError("an augmenting source needs the input size")
        if self.backgrounds is not None and self.draws < 1:
            raise ValueError("a source with backgrounds needs at least one draw (the swap coin)")
        self.plan.steps_per_epoch(self.order.size)   # fails early when no global batch fits
        if len(self.skip) >= len(self.catalog):
            raise SampleError("every sample of the shard set was left out as bad", file=self.catalog.shards[0])
        if self.backgrounds is not None and len(self.background_skip) >= len(self.backgrounds):
            raise SampleError("every background was left out as bad", file=self.backgrounds.shards[0])

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}       # file descriptors stay in their process

    def __setstate__(self, state):                   # in a reader worker, as it starts
        self.__dict__.update(state)
        die_with_parent()

    @property
    def names(self) -> tuple[str, ...]:
        """The outputs, in order: members (by extension), key, then the optional ones."""
        return (*self.catalog.exts, "key", *(["draws"] if self.draws else []),
                *(["affine", "mean", "std"] if self.augment is not None else []),
                *(["background", "swap"] if self.backgrounds is not None else []))

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def positions(self, iteration: int) -> np.ndarray:
        """Stream positions of this rank's pipeline iteration `iteration` (one iteration = one
        micro-batch; the pipeline starts at step `start_step`)."""
        step, micro = divmod(self.start_step * self.plan.accumulation + self.start_micro + iteration,
                             self.plan.accumulation)
        return self.plan.positions(self.order.size, step, micro, self.rank)

    def __call__(self, info) -> tuple:
        """One micro-batch (info: DALI's BatchInfo): a list of arrays per member, the rest dense
        (one array per output: fewer, larger messages between the workers and DALI)."""
        positions = self.positions(info.iteration)
        rows = [substitute(int(r), self.skip, len(self.catalog)) for r in self.order.sample_at(positions)]
        out = [[self.read(row, e) for row in rows] for e in range(len(self.catalog.exts))]
        out.append(padded_bytes([str(self.catalog.keys[row]) for row in rows]))
        if self.draws or self.augment is not None:
            u = sample_draws(self.order.seed, self.order.salt, positions, AUGMENT_DRAWS + self.draws)
            if self.draws:
                out.append(np.ascontiguousarray(u[:, AUGMENT_DRAWS:]))
            if self.augment is not None:
                out.extend(augment_parameters(u[:, :AUGMENT_DRAWS], self.augment, self.input_size))
        if self.backgrounds is not None:
            swap = u[:, AUGMENT_DRAWS] < np.float32(self.background_p)
            if EXT_MASK in self.catalog.exts:
                swap &= self.catalog.sizes[rows, self.catalog.exts.index(EXT_MASK)] >= 0
            else:
                swap[:] = False
            bg = self.background_order.sample_at(positions)
            out.append([read_member(self.backgrounds, self._files,
                                    substitute(int(r), self.background_skip, len(self.backgrounds)), 0, prefix="bg")
                        if chosen else np.zeros(0, np.uint8) for r, chosen in zip(bg, swap)])
            out.append(swap)
        return tuple(out)

    def read(self, row: int, ext: int) -> np.ndarray:
        data = read_member(self.catalog, self._files, row, ext)
        return data if self.dtypes is None else data.view(self.dtypes[ext])


def padded_bytes(strings: list[str]) -> np.ndarray:
    """Strings as one (n, longest) uint8 array, zero-padded (`key_strings` reads them back)."""
    encoded = [s.encode() for s in strings]
    out = np.zeros((len(encoded), max(map(len, encoded), default=0)), np.uint8)
    for i, e in enumerate(encoded):
        out[i, :len(e)] = np.frombuffer(e, np.uint8)
    return out


def die_with_parent() -> None:
    """Make this reader worker end with the process that started it (Linux: PR_SET_PDEATHSIG).
    DALI's workers outlive a rank killed with kill -9 otherwise, holding its stdout and stderr
    open (whoever waits for them to close waits forever), its memory and its shard files."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # 1: PR_SET_PDEATHSIG
    if parent == 1 or os.getppid() != parent:                      # it died before the call
        os._exit(1)


def substitute(row: int, skip: frozenset, size: int) -> int:
    """`row`, or where it was left out the next row in storage order that was not."""
    while row in skip:
        row = (row + 1) % size
    return row


def read_member(catalog: Catalog, files: dict, row: int, ext: int, prefix: str = "") -> np.ndarray:
    """Member `ext` of catalog row `row` by offset (pread on a descriptor cached in `files`); empty
    where the sample lacks it; a short read (a truncated shard) names the shard and the sample."""
    size = int(catalog.sizes[row, ext])
    if size < 0:
        return np.zeros(0, np.uint8)
    number = int(catalog.shard_of[row])
    shard = catalog.shards[number]
    fd = files.get((prefix, number))
    if fd is None:
        fd = files[(prefix, number)] = os.open(shard, os.O_RDONLY)
    data = os.pread(fd, size, int(catalog.offsets[row, ext]))
    if len(data) != size:
        raise SampleError(f"truncated shard: member {catalog.exts[ext]} has {len(data)} of its {size} "
                          "bytes", file=shard, sample=str(catalog.keys[row]))
    return np.frombuffer(data, np.uint8)


@dataclass
class EvalSource:
    """The external-source callback of one rank's evaluation: `batches` (shards.order.eval_rows'
    rows) in order, one micro-batch per call, cycling; outputs members..., key."""
    catalog: Catalog
    batches: list
    dtypes: tuple | None = None
    _files: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        die_with_parent()

    @property
    def num_outputs(self) -> int:
        return len(self.catalog.exts) + 1

    def __call__(self, info):
        rows = [int(r) for r in self.batches[info.iteration % len(self.batches)]]
        members = [[read_member(self.catalog, self._files, r, e).view(self.dtypes[e] if self.dtypes else np.uint8)
                    for r in rows] for e in range(len(self.catalog.exts))]
        return (*members, padded_bytes([str(self.catalog.keys[r]) for r in rows]))


def ordered_reader(source: "RankSource | EvalSource", name: str | None = None, prefetch: int | None = None):
    """The DataNodes of `source` in a pipeline (RankSource.names; an EvalSource: members..., key).
    Each worker call builds a whole micro-batch: the pipeline's batch_size must be the plan's
    micro_batch. `prefetch`: micro-batches prepared ahead (default: one per reader worker, at
    least 2), so that every worker has one to build."""
    prefetch = prefetch or max(2, reader_workers())
    return fn.external_source(source=source, num_outputs=source.num_outputs, batch=True, batch_info=True,
                              parallel=True, prefetch_queue_depth=prefetch, name=name)


def named_outputs(source: RankSource) -> dict:
    """ordered_reader's DataNodes by name (RankSource.names: members by extension, "key", ...)."""
    return dict(zip(source.names, ordered_reader(source)))


def reader_workers() -> int:
    """Reader worker processes per pipeline: POSEMAE_READER_WORKERS, else 1 on the CPU (a worker
    only preads a micro-batch's bytes and computes its augmentation numbers, and a spawned worker
    costs a Python start-up: one keeps up with DALI's decoding here, bench/data_pipeline's reader
    rows) and 4 with CUDA (GPU decoding is an order of magnitude faster, and shards on network
    storage make each read wait; our choice, not yet measured on a GPU)."""
    from .device import cuda_available
    chosen = os.environ.get("POSEMAE_READER_WORKERS")
    if chosen is not None:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"POSEMAE_READER_WORKERS must be a positive integer, got {chosen!r}")
        return int(chosen)
    return 4 if cuda_available() else 1


def worker_kwargs(num_workers: int) -> dict:
    """pipeline_def keyword arguments for the external source's worker processes."""
    return dict(py_num_workers=num_workers, py_start_method="spawn")


def key_strings(keys) -> list[str]:
    """The key output of a pipeline run (a TensorList of zero-padded uint8 rows) as strings."""
    return [bytes(np.asarray(keys[i])).rstrip(b"\0").decode() for i in range(len(keys))]


# -- augmentation from the sample's own draws ------------------------------------------------------
def augment_parameters(u: np.ndarray, augment, input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The draws u (n, AUGMENT_DRAWS) -> the augmentation of n samples, the maths of
    shards.pipelines.augment.crop_to_input and colour_normalisation with these numbers instead of
    DALI's random operators:

    affine (n, 2, 3): centred unit-crop coordinates ([-1/2, 1/2] per axis, crop_to_input_from) to
        input pixels: zoom by z*S, rotate by the angle, move the centre to S/2 + shift;
    mean, std (n, 3): per channel, for crop_mirror_normalize on 0..255 pixels: the brightness,
        contrast and colour gain jitter folded into the ImageNet normalisation."""
    from .pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
    u = np.asarray(u, np.float64)
    s = float(input_size)

    def between(x, lo, hi):
        return x * (hi - lo) + lo
    zoom = between(u[:, 0], *augment.scale) * s
    angle = np.deg2rad(between(u[:, 1], -augment.rotation_deg, augment.rotation_deg))
    shift = between(u[:, 2:4], -augment.translate * s, augment.translate * s) + 0.5 * s
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    affine = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)

    brightness = between(u[:, 4:5], 1 - augment.brightness, 1 + augment.brightness)
    contrast = between(u[:, 5:6], 1 - augment.contrast, 1 + augment.contrast)
    gain = between(u[:, 6:9], 1 - augment.colour_gain, 1 + augment.colour_gain)
    a = gain * (brightness * contrast)                   # y = a*x + b per channel
    b = gain * (brightness * 128.0 * (1.0 - contrast))
    mean = (255.0 * np.array(IMAGENET_MEAN) - b) / a
    std = 255.0 * np.array(IMAGENET_STD) / a
    return affine.astype(np.float32), mean.astype(np.float32), std.astype(np.float32)


def crop_to_input_from(hw, affine):
    """The 2x3 stored-crop -> input pixel matrix of an augmented sample: the crop (height, width
    `hw`, as image_size gives it) to centred unit coordinates, then its `affine` (augment_parameters)."""
    wh = fn.stack(hw[1], hw[0])
    unit = fn.transforms.scale(fn.transforms.translation(offset=-0.5 * wh), scale=1.0 / wh)
    return fn.transforms.combine(unit, affine)

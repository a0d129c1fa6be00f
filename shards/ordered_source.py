"""DALI input in the global order (shards.order): an `fn.external_source` whose parallel worker
processes read each sample's member bytes straight from the tars at the offsets the .idx files
give, in the order the BatchPlan deals to this rank, a whole micro-batch per worker call. DALI
decodes and augments as before; only the reader changes (bench/data_pipeline.py --readers
measures the two readers in the same graph).

    source = RankSource(Catalog.of(path, ["jpg", "mask.png"]), GlobalOrder(n, seed, "source"),
                        BatchPlan(global_batch, world_size, micro_batch), rank, start_step=step,
                        draws=12)
    jpg, png, key, position, u = ordered_reader(source)            # inside a pipeline_def
    pipe = my_pipeline(batch_size=plan.micro_batch, **worker_kwargs(num_workers))

Outputs per sample: each member's bytes (uint8, empty where the sample lacks it, as the
webdataset reader's missing_component_behavior="empty"), the key (uint8 bytes: `key_strings`),
the stream position (int64) and, with `draws` > 0, that many U[0, 1) floats drawn from the
position's own generator, for the augmentation: the same for a sample whichever rank or worker
reads it, so a resume on another world size draws the augmentations the original run drew.

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
from .schema import SampleError


@dataclass
class RankSource:
    """The per-sample callback of one rank's external source (picklable: it goes to the workers)."""
    catalog: Catalog
    order: GlobalOrder
    plan: BatchPlan
    rank: int
    start_step: int = 0
    draws: int = 0
    # micro-batches past start_step's first (a stream rebuilt mid-step after a bad sample)
    start_micro: int = 0
    # catalog rows left out (--skip-bad-samples): each is replaced by the next good row in storage
    # order, a function of the left-out set alone, so any world size reads the same substitute
    skip: frozenset = frozenset()
    # the pre-training background of position p: backgrounds.catalog row background_order.row_at(p)
    backgrounds: Catalog | None = None
    background_order: GlobalOrder | None = None
    background_skip: frozenset = frozenset()
    # numpy dtype per member (the webdataset reader's `dtypes`): raw float members come out as
    # float32 arrays, not bytes; None: every member uint8
    dtypes: tuple | None = None
    _files: dict = field(default_factory=dict, repr=False, compare=False)   # per worker: shard -> fd

    def __post_init__(self):
        if self.order.size != len(self.catalog):
            raise ValueError(f"order over {self.order.size} samples, catalog of {len(self.catalog)}")
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
    def num_outputs(self) -> int:
        return len(self.catalog.exts) + 2 + (1 if self.draws else 0) + (1 if self.backgrounds is not None else 0)

    def position(self, iteration: int, idx_in_batch: int) -> int:
        """Stream position of sample `idx_in_batch` of this rank's pipeline iteration `iteration`
        (one iteration = one micro-batch; the pipeline starts at step `start_step`)."""
        step, micro = divmod(self.start_step * self.plan.accumulation + self.start_micro + iteration,
                             self.plan.accumulation)
        epoch, within = divmod(step, self.plan.steps_per_epoch(self.order.size))
        return (epoch * self.order.size + within * self.plan.global_batch + self.rank * self.plan.per_rank
                + micro * self.plan.micro_batch + idx_in_batch)

    def __call__(self, info):
        """Per-sample mode (SampleInfo) or, with `ordered_reader(per_batch=True)`, one whole
        micro-batch per call (BatchInfo): fewer, larger messages between the workers and DALI."""
        if not hasattr(info, "idx_in_batch"):
            samples = [self.sample(self.position(info.iteration, i)) for i in range(self.plan.micro_batch)]
            return tuple(list(column) for column in zip(*samples))
        return self.sample(self.position(info.iteration, info.idx_in_batch))

    def sample(self, position: int) -> tuple:
        row = substitute(self.order.row_at(position), self.skip, len(self.catalog))
        out = [self.read(row, e) for e in range(len(self.catalog.exts))]
        out.append(np.frombuffer(str(self.catalog.keys[row]).encode(), np.uint8))
        out.append(np.array([position], np.int64))
        if self.draws:
            out.append(sample_draws(self.order.seed, self.order.salt, position, self.draws))
        if self.backgrounds is not None:
            bg = substitute(self.background_order.row_at(position), self.background_skip, len(self.backgrounds))
            out.append(read_member(self.backgrounds, self._files, bg, 0, prefix="bg"))
        return tuple(out)

    def read(self, row: int, ext: int) -> np.ndarray:
        data = read_member(self.catalog, self._files, row, ext)
        return data if self.dtypes is None else data.view(self.dtypes[ext])


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
        rows = self.batches[info.iteration % len(self.batches)]
        samples = [(*[read_member(self.catalog, self._files, int(r), e).view(self.dtypes[e] if self.dtypes else np.uint8)
                      for e in range(len(self.catalog.exts))],
                    np.frombuffer(str(self.catalog.keys[int(r)]).encode(), np.uint8)) for r in rows]
        return tuple(list(column) for column in zip(*samples))


def ordered_reader(source: "RankSource | EvalSource", name: str | None = None, prefetch: int = 2, per_batch: bool = True):
    """The DataNodes of `source` in a pipeline: members..., key, position[, draws]. `per_batch`:
    each worker call builds a whole micro-batch (the pipeline's batch_size must be the plan's
    micro_batch); otherwise DALI asks the workers sample by sample."""
    if per_batch:
        return fn.external_source(source=source, num_outputs=source.num_outputs, batch=True, batch_info=True,
                                  parallel=True, prefetch_queue_depth=prefetch, name=name)
    return fn.external_source(source=source, num_outputs=source.num_outputs, batch=False, parallel=True,
                              prefetch_queue_depth=prefetch, name=name)


def worker_kwargs(num_workers: int) -> dict:
    """pipeline_def keyword arguments for the external source's worker processes."""
    return dict(py_num_workers=num_workers, py_start_method="spawn")


def key_strings(keys) -> list[str]:
    """The key output of a pipeline run (a TensorList of uint8) as strings."""
    return [bytes(np.asarray(keys[i])).decode() for i in range(len(keys))]


# -- augmentation from the sample's own draws ------------------------------------------------------
AUGMENT_DRAWS = 9     # zoom, angle, shift x, shift y, brightness, contrast, 3 channel gains


def _between(u, lo: float, hi: float):
    return u * (hi - lo) + lo


def crop_to_input_drawn(hw, input_size: int, augment, u):
    """shards.pipelines.augment.crop_to_input with its random numbers taken from the draws `u`
    (u[0:4]) instead of DALI's per-pipeline random operators."""
    h, w = hw[0], hw[1]
    s = float(input_size)
    zoom = _between(u[0], *augment.scale)
    angle = _between(u[1], -augment.rotation_deg, augment.rotation_deg)
    shift = fn.stack(_between(u[2], -augment.translate * s, augment.translate * s),
                     _between(u[3], -augment.translate * s, augment.translate * s))
    mt = fn.transforms.translation(offset=fn.stack(-0.5 * w, -0.5 * h))
    mt = fn.transforms.scale(mt, scale=fn.stack(zoom * s / w, zoom * s / h))
    mt = fn.transforms.rotation(mt, angle=angle)
    return fn.transforms.translation(mt, offset=shift + 0.5 * s)


def colour_normalisation_drawn(augment, u, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """shards.pipelines.augment.colour_normalisation (jitter folded into the normalisation) with
    its random numbers taken from the draws `u` (u[4:9])."""
    brightness = _between(u[4], 1 - augment.brightness, 1 + augment.brightness)
    contrast = _between(u[5], 1 - augment.contrast, 1 + augment.contrast)
    gain = _between(u[6:9], 1 - augment.colour_gain, 1 + augment.colour_gain)
    a = gain * (brightness * contrast)
    b = gain * (brightness * 128.0 * (1.0 - contrast))
    return (fn.constant(fdata=[255.0 * m for m in mean], shape=[3]) - b) / a, \
        fn.constant(fdata=[255.0 * s for s in std], shape=[3]) / a

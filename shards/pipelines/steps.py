"""Processing steps the pipelines share, each a few DALI operators: reading this rank's part of
a shard set (the global order's RankSource; the webdataset reader remains for the benchmark's
comparison), decoding, the one resampling pass, normalisation, members a sample may lack, and the
arguments every pipeline gets."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from nvidia.dali import fn, types

from ..device import cpu_image_ops, cuda_available, dali_device_id
from ..order import BatchPlan, Catalog, GlobalOrder
from ..ordered_source import RankSource, reader_workers, worker_kwargs
from .opencv import opencv_warp
from .seeds import derive_seed
from .shardset import ShardSet


@dataclass(frozen=True)
class OrderedData:
    """One stream's data in the global order: the shard set (its left-out samples), its catalog,
    its order and how global batches are dealt on this world size."""
    shards: ShardSet
    catalog: Catalog
    order: GlobalOrder
    plan: BatchPlan

    @classmethod
    def of(cls, shards: ShardSet, exts, *, seed: int, salt: str, plan: BatchPlan, require: str | None = None):
        catalog = Catalog.of(list(shards.paths), exts)
        if require is not None:
            catalog = catalog.having(require)
        return cls(shards, catalog, GlobalOrder(len(catalog), seed, salt), plan)

    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on each rank: whole global batches only."""
        return self.plan.steps_per_epoch(len(self.catalog)) * self.plan.accumulation

    def source(self, rank: int, start: int, *, draws: int = 0, augment=None, input_size: int = 0, dtypes=None,
               backgrounds: "OrderedData | None" = None, background_salt: str = "backgrounds",
               background_p: float = 1.0) -> RankSource:
        """This rank's RankSource whose first micro-batch is number `start` of the run (step
        start // accumulation, micro-batch start % accumulation); left-out samples substituted.
        `draws`, `augment`, `input_size`, `background_p`: RankSource's."""
        step, micro = divmod(int(start), self.plan.accumulation)
        extra = {}
        if backgrounds is not None:
            extra = dict(backgrounds=backgrounds.catalog,
                         background_order=GlobalOrder(len(backgrounds.catalog), self.order.seed, background_salt),
                         background_skip=backgrounds.catalog.rows_of(backgrounds.shards.left_out),
                         background_p=background_p)
        return RankSource(self.catalog, self.order, self.plan, rank, start_step=step, start_micro=micro, draws=draws,
                          augment=augment, input_size=input_size, skip=self.catalog.rows_of(self.shards.left_out),
                          dtypes=dtypes, **extra)


def reader(shards: ShardSet, ext: list[str], *, name: str, rank: int, world_size: int, seed: int,
           shuffle: bool, dtypes: list | None = None, missing: str = "empty", pad_last_batch: bool = False):
    """fn.readers.webdataset over `shards`, this rank's part of them.

    shuffle=True: the shard-file order is reshuffled every epoch with `seed` (the same on every
    rank, so ranks keep disjoint parts) and samples are drawn from a buffer of up to 1024; the
    stored order is already shuffled by dataprep. shuffle=False: storage order, each rank sticking
    to its own part, which evaluation needs."""
    per_rank = max(1, shards.count() // world_size)
    order = dict(random_shuffle=True, initial_fill=min(1024, per_rank), shuffle_after_epoch=True,
                 shuffle_after_epoch_seed=derive_seed(seed, 0, name)) if shuffle else dict(stick_to_shard=True)
    return fn.readers.webdataset(
        paths=list(shards.paths), index_paths=list(shards.index_paths), ext=ext, dtypes=dtypes,
        missing_component_behavior=missing, name=name, shard_id=rank, num_shards=world_size,
        seed=derive_seed(seed, rank, name), pad_last_batch=pad_last_batch, **order)


def decode_image(jpg, gpu: bool):
    return fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)


def image_size(jpg):
    """(height, width) of each encoded image as floats, read from the header (CPU, no decode)."""
    return fn.cast(fn.peek_image_shape(jpg, dtype=types.INT32)[0:2], dtype=types.FLOAT)


def mask_or_zeros(png, hw):
    """Decode mask.png (1 channel, HWC uint8); a sample without one gets zeros of the image size.
    Always decoded on the CPU: PNG has no GPU decoder, `mixed` would fall back to the CPU."""
    has_mask = png.shape()[0] > 0
    if has_mask:
        mask = fn.decoders.image(png, output_type=types.GRAY)
    else:
        mask = zero_mask(hw)
    return mask, has_mask


def zero_mask(hw):
    """An all-background HxWx1 uint8 mask."""
    shape = fn.cat(fn.cast(hw, dtype=types.INT32), fn.constant(idata=[1], shape=[1], dtype=types.INT32))
    return fn.zeros(shape=shape, dtype=types.UINT8, layout="HWC")


def values_or_zeros(raw, count: int):
    """A raw float member (`count` values), or `count` zeros where the sample lacks it."""
    present = raw.shape()[0] > 0
    if present:
        values = raw
    else:
        values = fn.constant(fdata=[0.0] * count, shape=[count], dtype=types.FLOAT)
    return values, present


def warp(image, matrix, input_size: int, gpu: bool):
    """One bilinear resampling pass (all channels at once) to input_size x input_size, zeros
    outside the stored crop. `matrix` maps stored-crop pixels to input pixels.

    GPU: DALI's warp_affine. CPU: OpenCV's warpAffine called from the graph (python_function on
    the whole batch; OpenCV releases the GIL) unless POSEMAE_CPU_IMAGE_OPS=dali: DALI's CPU warp
    is a scalar per-pixel loop, about 1.8 ms for a 256 px RGBA output on this machine's cores
    against 0.12-0.2 ms for OpenCV's fixed-point SIMD one, and it was three quarters of the
    pipeline's time. OpenCV quantises sample positions to 1/32 pixel and weights to 15 bits, well
    below what a training input can show (a test pins the two within 3 grey levels)."""
    if uses_dali_image_ops(gpu):
        # inverse_map=False: `matrix` maps source to destination (pinned by the joint/dot test)
        return fn.warp_affine(image, matrix=matrix, size=[input_size, input_size], inverse_map=False,
                              fill_value=0, interp_type=types.INTERP_LINEAR)
    return fn.python_function(image, matrix, function=functools.partial(opencv_warp, size=input_size),
                              batch_processing=True)


def uses_dali_image_ops(gpu: bool) -> bool:
    """DALI's own resampling/blending operators: always on a GPU, on the CPU when asked."""
    return gpu or cpu_image_ops() == "dali"


def normalise(image, mean, std):
    """HWC uint8 -> CHW float32, (x - mean) / std per channel."""
    return fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)


def sample_key(jpg):
    """The reader's source info, '<tar>:<offset>:<key>.jpg', as uint8 bytes (parsed in Python)."""
    return fn.get_property(jpg, key="source_info")


def pipeline_kwargs(*, batch_size: int, num_threads: int, seed: int, rank: int, salt: str) -> dict:
    """Arguments every pipeline gets: CPU mode (device_id None) unless CUDA is present, and the
    ordered reader's spawned workers. The pipeline seed no longer draws any augmentation (the
    samples' own draws do); it stays explicit so that nothing depends on DALI's default."""
    device_id = dali_device_id(torch.cuda.current_device()) if cuda_available() else None
    return dict(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                seed=derive_seed(seed, rank, salt), prefetch_queue_depth=2, **worker_kwargs(reader_workers()))


def gpu_outputs(gpu: bool, *nodes):
    """Every tensor output on the GPU when the pipeline runs there (keys stay CPU strings)."""
    return tuple(n.gpu() if gpu else n for n in nodes)

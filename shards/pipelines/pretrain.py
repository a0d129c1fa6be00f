"""Stage 1 input (docs/method.md): source and target images with their foreground masks, the background
replaced through the mask by a random ImageNet image with probability p_bg, the paper's
augmentation applied to image and mask alike, normalised. Also the segmentation network's input
(image + mask, no background swap).

Per sample, in order:
  decode jpg (and mask.png, or zeros where the sample has none)
  one bilinear warp of image and mask together (a 4-channel HWC tensor): rotation, zoom, shift
  background, where the coin says so: a random square of a background shard image (decoded as
      that window only), composited x' = m*x + (1-m)*u
  one crop_mirror_normalize pass: colour jitter and ImageNet normalisation folded into a
      per-sample mean/std, HWC uint8 -> CHW float (the mask channel -> [0, 1])
Compositing after the warp is exact: the warp is linear in the pixel values and a convex
combination commutes with it. The same holds for the jitter (affine per channel, see
augment.colour_normalisation), so the GPU graph, whose arithmetic is cheap, blends in float after
normalising, and the CPU graph blends in uint8 before it (opencv_composite: whole pixels copied,
only the soft edge computed; the two differ by uint8 rounding, at most half a grey level before
the jitter). POSEMAE_CPU_IMAGE_OPS=dali runs the GPU graph's operators on the CPU instead. The
background gets its own random window instead of the foreground's warp, which is just another
random background. Samples without a mask get mask 0, has_mask False and never a background swap.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath

from ..device import cuda_available
from ..order import BatchPlan
from ..ordered_source import crop_to_input_from, named_outputs
from ..schema import EXT_IMAGE, EXT_MASK
from .augment import as_augment, colour_normalisation, crop_to_input, with_mask_channel
from .loader import Loader, Stream
from .opencv import opencv_composite
from .shardset import ShardSet
from .steps import (OrderedData, decode_image, gpu_outputs, image_size, mask_or_zeros, normalise, pipeline_kwargs,
                    uses_dali_image_ops, warp, zero_mask)

# the sample's own draws (beside its augmentation's): the background coin (the reader's, RankSource
# background_p), the background window's x, y
SWAP, BG_X, BG_Y = 0, 1, 2
PRETRAIN_DRAWS = 3


def composite_and_normalise(both, background_jpg, swap, mean, std, input_size: int, gpu: bool, draws):
    """Warped RGBA uint8 -> normalised image (3,S,S) and mask (1,S,S), the background replaced
    where `swap`. Only the swapped samples decode a background window (a DALI conditional splits
    the batch). DALI's operators (GPU, or POSEMAE_CPU_IMAGE_OPS=dali) blend in float after the
    normalisation; the CPU graph otherwise blends in uint8 with OpenCV before it."""
    if uses_dali_image_ops(gpu):
        both = normalise(both, *with_mask_channel(mean, std))
        image, mask = both[0:3], both[3:4]
        if swap:
            background = normalise(random_background(background_jpg, input_size, gpu, draws), mean, std)
            image = image + (1.0 - mask) * (background - image)      # m*x + (1-m)*u
        else:
            image = image
        return image, mask
    if swap:
        background = random_background(background_jpg, input_size, gpu, draws)
    else:
        background = fn.zeros(shape=[1, 1, 3], dtype=types.UINT8, layout="HWC")
    both = fn.python_function(both, background, swap, function=opencv_composite, batch_processing=True)
    both = normalise(both, *with_mask_channel(mean, std))
    return both[0:3], both[3:4]


def random_background(jpg, input_size: int, gpu: bool, draws):
    """A random input_size square of each background image, decoded as that window only (ROI
    decoding), placed by the foreground sample's draws; images with a shorter side below
    input_size are upscaled."""
    hw = image_size(jpg)
    side = dmath.min(dmath.min(hw[0], hw[1]), float(input_size))
    window = fn.decoders.image_crop(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                    crop_w=side, crop_h=side,
                                    crop_pos_x=draws[BG_X], crop_pos_y=draws[BG_Y])
    if side < float(input_size):
        window = fn.resize(window, size=[input_size, input_size])
    return window


@pipeline_def(enable_conditionals=True)
def pretrain_pipeline(source, *, input_size: int, read_masks: bool, gpu: bool):
    """Outputs image (3,S,S) float, mask (1,S,S) float in [0,1], has_mask bool, key. `source`: a
    RankSource over [jpg, mask.png] (or [jpg] without masks), with PRETRAIN_DRAWS draws, its
    augmentation (or none) and, for background replacement, each position's background and coin
    (the reader reads only the backgrounds it swaps in)."""
    out = named_outputs(source)
    jpg, draws = out[EXT_IMAGE], out["draws"]
    hw = image_size(jpg)
    image = decode_image(jpg, gpu)
    if read_masks:
        mask, has_mask = mask_or_zeros(out[EXT_MASK], hw)
    else:                                   # masks ignored: all background, never swapped
        mask = zero_mask(hw)
        has_mask = fn.constant(idata=[0], shape=[], dtype=types.BOOL)
    if gpu:
        mask = mask.gpu()

    if "affine" in out:
        matrix, mean, std = crop_to_input_from(hw, out["affine"]), out["mean"], out["std"]
    else:
        matrix, (mean, std) = crop_to_input(hw, input_size, None, 0), colour_normalisation(None, 0)
    both = warp(fn.cat(image, mask, axis=2), matrix, input_size, gpu)
    if "background" not in out:
        both = normalise(both, *with_mask_channel(mean, std))
        return (*gpu_outputs(gpu, both[0:3], both[3:4], has_mask), out["key"])

    # every position has its background (GlobalOrder of the backgrounds); the reader's coin says
    # whether it is swapped in (and read at all); an empty mask member never swaps
    swap = out["swap"] & has_mask
    image, mask = composite_and_normalise(both, out["background"], swap, mean, std, input_size, gpu, draws)
    return (*gpu_outputs(gpu, image, mask, has_mask), out["key"])


NAMES = ("image", "mask", "has_mask", "key")


def _stream(data: OrderedData, backgrounds: OrderedData | None, *, name, batch_size, input_size, p_bg, read_masks,
            augment, seed, rank, num_threads, is_target) -> Stream:
    gpu = cuda_available()

    def build(start):
        source = data.source(rank, start, draws=PRETRAIN_DRAWS, augment=augment, input_size=input_size,
                             backgrounds=backgrounds, background_salt=f"backgrounds/{name}", background_p=p_bg)
        return pretrain_pipeline(
            source, input_size=input_size, read_masks=read_masks, gpu=gpu,
            **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=seed, rank=rank, salt=name))
    shard_sets = [data.shards] + ([backgrounds.shards] if backgrounds is not None else [])
    return Stream(build, batch_size, NAMES, shard_sets, constants={"is_target": is_target})


def pretrain_loader(source, target, backgrounds, *, batch_size: int, input_size: int = 256, p_bg: float = 0.5,
                    target_fraction: float | None = None, use_target_masks: bool = True, seed: int = 0,
                    rank: int = 0, world_size: int = 1, global_batch: int | None = None, num_threads: int = 2,
                    augment=True) -> Loader:
    """Pre-training batches: image (B,3,S,S) normalised, mask (B,1,S,S) in [0,1] (zeros where a
    sample has none), has_mask (B,) bool, is_target (B,) bool, key (list of B str).

    `batch_size` is the micro-batch, `global_batch` (default batch_size x world_size) the samples
    of one optimizer step over all ranks. Every micro-batch holds round(batch_size *
    target_fraction) target samples, target_fraction defaulting to the target's share of all
    samples; source and target each follow their own global order, so the mix (a function of
    the global batch and the micro-batch) is the same on any number of ranks. `target` None: source only; `backgrounds` None or
    p_bg 0: no background replacement. use_target_masks False reads no target masks (the "w/o
    M_T" ablation: mask 0, no swap on target images). An epoch is one pass over the source's
    whole global batches; the target stream runs on alongside. Source and target are separate
    DALI pipelines of `num_threads` CPU threads each; `augment` takes True, False or an Augment."""
    if not 0.0 <= p_bg <= 1.0:
        raise ValueError(f"p_bg must be in [0, 1], got {p_bg}")
    augment = as_augment(augment)
    global_batch = global_batch or batch_size * world_size
    plan = BatchPlan(global_batch, world_size, batch_size)           # checks the micro-batch divides
    src = ShardSet.at(source)
    tgt = ShardSet.at(target) if target is not None else None
    bgs = ShardSet.at(backgrounds) if backgrounds is not None and p_bg > 0 else None
    n_src, n_tgt = src.count(), (tgt.count() if tgt else 0)
    b_tgt = 0
    if tgt is not None:
        if batch_size < 2:
            raise ValueError("source and target in every batch need batch_size >= 2")
        fraction = n_tgt / (n_src + n_tgt) if target_fraction is None else float(target_fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"target_fraction must be in (0, 1), got {fraction}")
        b_tgt = min(max(round(batch_size * fraction), 1), batch_size - 1)
    b_src = batch_size - b_tgt
    # Every micro-batch holds b_src source and b_tgt target samples, so every global batch holds
    # (b_src, b_tgt) x global_batch / micro-batch: fixed by the global batch and the micro-batch,
    # the same on any number of ranks (and always divisible among them).
    per = world_size * plan.accumulation
    g_src, g_tgt = b_src * per, b_tgt * per
    bg_data = None
    if bgs is not None:
        bg_data = OrderedData.of(bgs, [EXT_IMAGE], seed=seed, salt="backgrounds", plan=BatchPlan(1, 1, 1))
    common = dict(input_size=input_size, p_bg=p_bg, augment=augment, seed=seed, rank=rank, num_threads=num_threads)
    src_data = OrderedData.of(src, [EXT_IMAGE, EXT_MASK], seed=seed, salt="source",
                              plan=BatchPlan(g_src, world_size, b_src))
    streams = [_stream(src_data, bg_data, name="source", batch_size=b_src, read_masks=True, is_target=False,
                       **common)]
    if tgt is not None:
        tgt_data = OrderedData.of(tgt, [EXT_IMAGE, EXT_MASK] if use_target_masks else [EXT_IMAGE], seed=seed,
                                  salt="target", plan=BatchPlan(g_tgt, world_size, b_tgt))
        streams.append(_stream(tgt_data, bg_data, name="target", batch_size=b_tgt, read_masks=use_target_masks,
                               is_target=True, **common))
    fingerprint = dict(kind="pretrain", samples=[n_src, n_tgt], global_batches=[g_src, g_tgt], seed=seed,
                       input_size=input_size, p_bg=p_bg)
    return Loader(streams, src_data.batches_per_epoch(), fingerprint=fingerprint, accumulation=plan.accumulation)


def segnet_loader(source, *, batch_size: int, input_size: int, seed: int, rank: int, world_size: int,
                  global_batch: int | None = None, augment=True, num_threads: int = 2) -> Loader:
    """Segmentation-network batches from the samples that have a mask (others are left out of
    the order): image (B,3,S,S) normalised, mask (B,1,S,S) in [0,1], has_mask (all True), key."""
    src = ShardSet.at(source)
    n = src.count(require_ext=EXT_MASK)
    if n == 0:
        raise ValueError(f"no sample in {source} has a mask.png: nothing to train the segmentation network on")
    plan = BatchPlan(global_batch or batch_size * world_size, world_size, batch_size)
    data = OrderedData.of(src, [EXT_IMAGE, EXT_MASK], seed=seed, salt="segnet", plan=plan, require=EXT_MASK)
    stream = _stream(data, None, name="segnet", batch_size=batch_size, input_size=input_size, p_bg=0.0,
                     read_masks=True, augment=as_augment(augment), seed=seed, rank=rank, num_threads=num_threads,
                     is_target=False)
    stream.constants = None
    fingerprint = dict(kind="segnet", samples=[n], global_batch=plan.global_batch, seed=seed, input_size=input_size)
    return Loader([stream], data.batches_per_epoch(), fingerprint=fingerprint, accumulation=plan.accumulation)

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
from ..schema import EXT_IMAGE, EXT_MASK
from .augment import Augment, as_augment, colour_normalisation, crop_to_input, with_mask_channel
from .loader import Loader, Stream, per_rank_min
from .opencv import opencv_composite
from .seeds import derive_seed, op_seed
from .shardset import ShardSet
from .steps import (decode_image, gpu_outputs, image_size, mask_or_zeros, normalise, pipeline_kwargs, reader,
                    sample_key, uses_dali_image_ops, warp, zero_mask)


def composite_and_normalise(both, background_jpg, swap, mean, std, input_size: int, gpu: bool, seed: int):
    """Warped RGBA uint8 -> normalised image (3,S,S) and mask (1,S,S), the background replaced
    where `swap`. Only the swapped samples decode a background window (a DALI conditional splits
    the batch). DALI's operators (GPU, or POSEMAE_CPU_IMAGE_OPS=dali) blend in float after the
    normalisation; the CPU graph otherwise blends in uint8 with OpenCV before it."""
    if uses_dali_image_ops(gpu):
        both = normalise(both, *with_mask_channel(mean, std))
        image, mask = both[0:3], both[3:4]
        if swap:
            background = normalise(random_background(background_jpg, input_size, gpu, seed), mean, std)
            image = image + (1.0 - mask) * (background - image)      # m*x + (1-m)*u
        else:
            image = image
        return image, mask
    if swap:
        background = random_background(background_jpg, input_size, gpu, seed)
    else:
        background = fn.zeros(shape=[1, 1, 3], dtype=types.UINT8, layout="HWC")
    both = fn.python_function(both, background, swap, function=opencv_composite, batch_processing=True)
    both = normalise(both, *with_mask_channel(mean, std))
    return both[0:3], both[3:4]


def random_background(jpg, input_size: int, gpu: bool, seed: int):
    """A random input_size square of each background image, decoded as that window only (ROI
    decoding); images with a shorter side below input_size are upscaled."""
    hw = image_size(jpg)
    side = dmath.min(dmath.min(hw[0], hw[1]), float(input_size))
    window = fn.decoders.image_crop(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                    crop_w=side, crop_h=side,
                                    crop_pos_x=fn.random.uniform(range=[0.0, 1.0], seed=op_seed(seed, "bg_x")),
                                    crop_pos_y=fn.random.uniform(range=[0.0, 1.0], seed=op_seed(seed, "bg_y")))
    if side < float(input_size):
        window = fn.resize(window, size=[input_size, input_size])
    return window


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def pretrain_pipeline(shards: ShardSet, backgrounds: ShardSet | None, *, name: str, input_size: int,
                      p_bg: float, read_masks: bool, masks_required: bool, augment: Augment | None,
                      rank: int, world_size: int, shuffle_seed: int, gpu: bool):
    """Outputs image (3,S,S) float, mask (1,S,S) float in [0,1], has_mask bool, key info."""
    common = dict(rank=rank, world_size=world_size, seed=shuffle_seed, shuffle=True)
    seed = derive_seed(shuffle_seed, rank, name)              # the pipeline's seed (pipeline_kwargs)
    if read_masks:
        jpg, png = reader(shards, [EXT_IMAGE, EXT_MASK], name=name, missing="skip" if masks_required else "empty", **common)
    else:
        jpg = reader(shards, [EXT_IMAGE], name=name, **common)
    hw = image_size(jpg)
    image = decode_image(jpg, gpu)
    if read_masks:
        mask, has_mask = mask_or_zeros(png, hw)
    else:                                   # masks ignored: all background, never swapped
        mask = zero_mask(hw)
        has_mask = fn.constant(idata=[0], shape=[], dtype=types.BOOL)
    if gpu:
        mask = mask.gpu()

    matrix = crop_to_input(hw, input_size, augment, seed)
    both = warp(fn.cat(image, mask, axis=2), matrix, input_size, gpu)
    mean, std = colour_normalisation(augment, seed)
    if backgrounds is None:
        both = normalise(both, *with_mask_channel(mean, std))
        return (*gpu_outputs(gpu, both[0:3], both[3:4], has_mask), sample_key(jpg))

    # The reader advances one background per sample, swapped or not.
    background_jpg = reader(backgrounds, EXT_IMAGE, name=name + "_bg", **common)
    swap = fn.random.coin_flip(probability=p_bg, dtype=types.BOOL, seed=op_seed(seed, "swap")) & has_mask
    image, mask = composite_and_normalise(both, background_jpg, swap, mean, std, input_size, gpu, seed)
    return (*gpu_outputs(gpu, image, mask, has_mask), sample_key(jpg))


NAMES = ("image", "mask", "has_mask", "key")


def _stream(shards: ShardSet, backgrounds, *, name, batch_size, input_size, p_bg, read_masks, masks_required,
            augment, seed, rank, world_size, num_threads, is_target) -> Stream:
    gpu = cuda_available()

    def build(checkpoint):
        return pretrain_pipeline(
            shards, backgrounds, name=name, input_size=input_size, p_bg=p_bg, read_masks=read_masks,
            masks_required=masks_required, augment=augment, rank=rank, world_size=world_size, shuffle_seed=seed, gpu=gpu,
            **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=seed, rank=rank,
                              salt=name, checkpoint=checkpoint))
    shard_sets = [shards] + ([backgrounds] if backgrounds is not None else [])
    return Stream(build, batch_size, NAMES, shard_sets, constants={"is_target": is_target})


def pretrain_loader(source, target, backgrounds, *, batch_size: int, input_size: int = 256, p_bg: float = 0.5,
                    target_fraction: float | None = None, use_target_masks: bool = True, seed: int = 0,
                    rank: int = 0, world_size: int = 1, num_threads: int = 2, augment=True) -> Loader:
    """Pre-training batches: image (B,3,S,S) normalised, mask (B,1,S,S) in [0,1] (zeros where a
    sample has none), has_mask (B,) bool, is_target (B,) bool, key (list of B str).

    Every batch holds source and target samples: round(batch_size * target_fraction) target ones,
    target_fraction defaulting to the target's share of all samples. `target` None: source only;
    `backgrounds` None or p_bg 0: no background replacement. use_target_masks False reads no
    target masks (the "w/o M_T" ablation: mask 0, no swap on target images). An epoch is one pass
    over this rank's part of the source: floor(source samples / world_size / source batch); the
    target stream runs on alongside. Source and target are separate DALI pipelines of
    `num_threads` CPU threads each; `augment` takes True, False or an Augment."""
    if not 0.0 <= p_bg <= 1.0:
        raise ValueError(f"p_bg must be in [0, 1], got {p_bg}")
    augment = as_augment(augment)
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
    common = dict(input_size=input_size, p_bg=p_bg, masks_required=False, augment=augment, seed=seed,
                  rank=rank, world_size=world_size, num_threads=num_threads)
    streams = [_stream(src, bgs, name="source", batch_size=b_src, read_masks=True, is_target=False, **common)]
    if tgt is not None:
        streams.append(_stream(tgt, bgs, name="target", batch_size=b_tgt, read_masks=use_target_masks,
                               is_target=True, **common))
    fingerprint = dict(kind="pretrain", samples=[n_src, n_tgt], batch_sizes=[b_src, b_tgt], rank=rank,
                       world_size=world_size, seed=seed, input_size=input_size, p_bg=p_bg)
    return Loader(streams, per_rank_min(n_src, world_size) // b_src, fingerprint=fingerprint)


def segnet_loader(source, *, batch_size: int, input_size: int, seed: int, rank: int, world_size: int,
                  augment=True, num_threads: int = 2) -> Loader:
    """Segmentation-network batches from the samples that have a mask (others are skipped):
    image (B,3,S,S) normalised, mask (B,1,S,S) in [0,1], has_mask (all True), key."""
    src = ShardSet.at(source)
    n = src.count(require_ext=EXT_MASK)
    if n == 0:
        raise ValueError(f"no sample in {source} has a mask.png: nothing to train the segmentation network on")
    stream = _stream(src, None, name="segnet", batch_size=batch_size, input_size=input_size, p_bg=0.0,
                     read_masks=True, masks_required=True, augment=as_augment(augment), seed=seed, rank=rank,
                     world_size=world_size, num_threads=num_threads, is_target=False)
    stream.constants = None
    fingerprint = dict(kind="segnet", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       seed=seed, input_size=input_size)
    return Loader([stream], per_rank_min(n, world_size) // batch_size, fingerprint=fingerprint)

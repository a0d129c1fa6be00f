"""Stage 2 input (docs/method.md): labelled source crops for the 3D-heatmap loss and label-free target
crops for the attention regulariser.

The random affine that warps the image also moves the 2D joints (fn.coord_transform with the same
2x3 matrix), so a joint stays on the pixel it labels; depth is left alone (root-relative, mm).
The colour jitter is folded into the normalisation, as in pre-training (common.py).
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .common import (Augment, Loader, ShardSet, Stream, as_augment, colour_normalisation, crop_to_input,
                     decode_image, derive_seed, gpu_outputs, image_size, normalise, per_rank_min, pipeline_kwargs,
                     reader, sample_key, values_or_zeros, warp)
from ..device import cuda_available

LABEL_EXTS = ["jpg", "joints3d.f32", "joints2d.f32", "visible.u8", "intrinsics.f32"]
LABEL_DTYPES = [types.UINT8, types.FLOAT, types.FLOAT, types.UINT8, types.FLOAT]


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def pose_pipeline(shards: ShardSet, *, name: str, input_size: int, augment: Augment | None, labels: bool,
                  evaluation: bool, num_joints: int, root_index: int, rank: int, world_size: int,
                  shuffle_seed: int, gpu: bool):
    """Crops warped to the input (randomly when augment), with or without their labels.

    Outputs, labels=False: image, key. Training: image, joints2d (K,2) input px, depth_rel_mm
    (K,), visible (K,) float, has_depth, key. Evaluation: image, joints3d_mm (K,3), joints2d_px
    (K,2) crop px, visible, intrinsics (4,), crop_to_input (2,3), has_3d, key. Members a sample
    lacks (2D-only sets have no joints3d/intrinsics) come out as zeros with has_depth/has_3d False."""
    read = dict(name=name, rank=rank, world_size=world_size, seed=shuffle_seed, shuffle=not evaluation,
                pad_last_batch=evaluation)
    if labels:
        jpg, joints3d, joints2d, visible, intrinsics = reader(shards, LABEL_EXTS, dtypes=LABEL_DTYPES, **read)
    else:
        jpg = reader(shards, ["jpg"], **read)
    hw = image_size(jpg)
    seed = derive_seed(shuffle_seed, rank, name)              # the pipeline's seed (pipeline_kwargs)
    matrix = crop_to_input(hw, input_size, augment, seed)
    image = normalise(warp(decode_image(jpg, gpu), matrix, input_size, gpu), *colour_normalisation(augment, seed))
    if not labels:
        return (*gpu_outputs(gpu, image), sample_key(jpg))

    k = num_joints
    joints3d, has_3d = values_or_zeros(joints3d, 3 * k)
    joints3d = fn.reshape(joints3d, shape=[k, 3])
    joints2d, _ = values_or_zeros(joints2d, 2 * k)
    joints2d = fn.reshape(joints2d, shape=[k, 2])
    visible, _ = values_or_zeros(fn.cast(visible, dtype=types.FLOAT), k)
    if evaluation:
        intrinsics, _ = values_or_zeros(intrinsics, 4)
        return (*gpu_outputs(gpu, image, joints3d, joints2d, visible, intrinsics, matrix, has_3d), sample_key(jpg))
    joints2d_input = fn.coord_transform(joints2d, MT=matrix)
    depth_rel = joints3d[:, 2] - joints3d[root_index, 2]
    return (*gpu_outputs(gpu, image, joints2d_input, depth_rel, visible, has_3d), sample_key(jpg))


FINETUNE_NAMES = ("image", "joints2d", "depth_rel_mm", "visible", "has_depth", "key")
TARGET_NAMES = ("image", "key")


def pose_stream(shards: ShardSet, *, name: str, names: tuple, batch_size: int, input_size: int, augment,
                labels: bool, evaluation: bool, seed: int, rank: int, world_size: int, num_threads: int) -> Stream:
    num_joints, root_index = shards.num_joints() if labels else (0, 0)
    gpu = cuda_available()

    def build(checkpoint):
        return pose_pipeline(
            shards, name=name, input_size=input_size, augment=augment, labels=labels, evaluation=evaluation,
            num_joints=num_joints, root_index=root_index, rank=rank, world_size=world_size, shuffle_seed=seed,
            gpu=gpu, **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=seed, rank=rank,
                                       salt=name, checkpoint=checkpoint))
    return Stream(build, batch_size, names, [shards])


def finetune_loader(source, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                    augment=True, num_threads: int = 2) -> Loader:
    """Labelled source batches: image (B,3,S,S) normalised, joints2d (B,K,2) in input pixels,
    depth_rel_mm (B,K) = z - z_root (root index from the samples' meta), visible (B,K) float,
    has_depth (B,) bool, key. One epoch = floor(samples / world_size / batch_size) batches."""
    src = ShardSet.at(source)
    n = src.count()
    stream = pose_stream(src, name="finetune", names=FINETUNE_NAMES, batch_size=batch_size, input_size=input_size,
                         augment=as_augment(augment), labels=True, evaluation=False, seed=seed, rank=rank,
                         world_size=world_size, num_threads=num_threads)
    fingerprint = dict(kind="finetune", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       seed=seed, input_size=input_size)
    return Loader([stream], per_rank_min(n, world_size) // batch_size, fingerprint=fingerprint)


def target_loader(target, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                  augment=True, num_threads: int = 2) -> Loader:
    """Label-free target batches for the attention regulariser: image (B,3,S,S), key. Both
    attention networks see the same augmented image, so augmentation is on by default."""
    tgt = ShardSet.at(target)
    n = tgt.count()
    stream = pose_stream(tgt, name="target", names=TARGET_NAMES, batch_size=batch_size, input_size=input_size,
                         augment=as_augment(augment), labels=False, evaluation=False, seed=seed, rank=rank,
                         world_size=world_size, num_threads=num_threads)
    fingerprint = dict(kind="target", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       seed=seed, input_size=input_size)
    return Loader([stream], per_rank_min(n, world_size) // batch_size, fingerprint=fingerprint)

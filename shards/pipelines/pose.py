"""The pose pipelines, one per purpose: labelled training crops, label-free target crops, and
evaluation crops with everything needed to score a prediction in millimetres. They share their
steps (steps.py, augment.py) and differ in what they read and return.

The random affine that warps the image also moves the 2D joints (fn.coord_transform with the same
2x3 matrix), so a joint stays on the pixel it labels; depth is left alone (root-relative, mm).
Members a sample lacks (2D-only sets have no joints3d/intrinsics) come out as zeros, with
has_depth / has_3d False.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from ..schema import EXT_IMAGE, EXT_INTRINSICS, EXT_JOINTS2D, EXT_JOINTS3D, EXT_VISIBLE
from .augment import Augment, colour_normalisation, crop_to_input
from .seeds import derive_seed
from .shardset import ShardSet
from .steps import decode_image, gpu_outputs, image_size, normalise, reader, sample_key, values_or_zeros, warp

LABEL_EXTS = [EXT_IMAGE, EXT_JOINTS3D, EXT_JOINTS2D, EXT_VISIBLE, EXT_INTRINSICS]
LABEL_DTYPES = [types.UINT8, types.FLOAT, types.FLOAT, types.UINT8, types.FLOAT]

TRAINING_OUTPUTS = ("image", "joints2d", "depth_rel_mm", "visible", "has_depth", "key")
TARGET_OUTPUTS = ("image", "key")
EVALUATION_OUTPUTS = ("image", "joints3d_mm", "joints2d_px", "visible", "intrinsics", "crop_to_input", "has_3d", "key")


def input_crop(jpg, *, input_size: int, augment: Augment | None, seed: int, gpu: bool):
    """The network input (3,S,S), normalised, and the 2x3 affine from stored-crop to input pixels."""
    matrix = crop_to_input(image_size(jpg), input_size, augment, seed)
    image = normalise(warp(decode_image(jpg, gpu), matrix, input_size, gpu), *colour_normalisation(augment, seed))
    return image, matrix


def joint_labels(joints3d, joints2d, visible, num_joints: int):
    """Raw label members -> joints3d (K,3) mm, has_3d, joints2d (K,2) stored-crop px, visible (K,) float."""
    joints3d, has_3d = values_or_zeros(joints3d, 3 * num_joints)
    joints3d = fn.reshape(joints3d, shape=[num_joints, 3])
    joints2d, _ = values_or_zeros(joints2d, 2 * num_joints)
    joints2d = fn.reshape(joints2d, shape=[num_joints, 2])
    visible, _ = values_or_zeros(fn.cast(visible, dtype=types.FLOAT), num_joints)
    return joints3d, has_3d, joints2d, visible


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def training_pipeline(shards: ShardSet, *, name: str, input_size: int, augment: Augment | None, num_joints: int,
                      root_index: int, rank: int, world_size: int, shuffle_seed: int, gpu: bool):
    """TRAINING_OUTPUTS: image, joints2d (K,2) in input pixels, depth_rel_mm (K,) = z - z_root,
    visible (K,) float, has_depth, key. Shuffled."""
    jpg, joints3d, joints2d, visible, _ = reader(shards, LABEL_EXTS, dtypes=LABEL_DTYPES, name=name, rank=rank,
                                                 world_size=world_size, seed=shuffle_seed, shuffle=True)
    seed = derive_seed(shuffle_seed, rank, name)              # the pipeline's seed (pipeline_kwargs)
    image, matrix = input_crop(jpg, input_size=input_size, augment=augment, seed=seed, gpu=gpu)
    joints3d, has_3d, joints2d, visible = joint_labels(joints3d, joints2d, visible, num_joints)
    joints2d_input = fn.coord_transform(joints2d, MT=matrix)
    depth_rel = joints3d[:, 2] - joints3d[root_index, 2]
    return (*gpu_outputs(gpu, image, joints2d_input, depth_rel, visible, has_3d), sample_key(jpg))


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def target_pipeline(shards: ShardSet, *, name: str, input_size: int, augment: Augment | None, rank: int,
                    world_size: int, shuffle_seed: int, gpu: bool):
    """TARGET_OUTPUTS: image, key. Images only (no labels are read). Shuffled."""
    jpg = reader(shards, [EXT_IMAGE], name=name, rank=rank, world_size=world_size, seed=shuffle_seed, shuffle=True)
    seed = derive_seed(shuffle_seed, rank, name)
    image, _ = input_crop(jpg, input_size=input_size, augment=augment, seed=seed, gpu=gpu)
    return (*gpu_outputs(gpu, image), sample_key(jpg))


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def evaluation_pipeline(shards: ShardSet, *, name: str, input_size: int, num_joints: int, rank: int,
                        world_size: int, shuffle_seed: int, gpu: bool):
    """EVALUATION_OUTPUTS: image, joints3d_mm (K,3), joints2d_px (K,2) stored-crop px, visible,
    intrinsics (4,), crop_to_input (2,3), has_3d, key. No augmentation; storage order, each rank
    its own part, the last batch padded (the loader marks the padding)."""
    jpg, joints3d, joints2d, visible, intrinsics = reader(
        shards, LABEL_EXTS, dtypes=LABEL_DTYPES, name=name, rank=rank, world_size=world_size, seed=shuffle_seed,
        shuffle=False, pad_last_batch=True)
    seed = derive_seed(shuffle_seed, rank, name)
    image, matrix = input_crop(jpg, input_size=input_size, augment=None, seed=seed, gpu=gpu)
    joints3d, has_3d, joints2d, visible = joint_labels(joints3d, joints2d, visible, num_joints)
    intrinsics, _ = values_or_zeros(intrinsics, 4)
    return (*gpu_outputs(gpu, image, joints3d, joints2d, visible, intrinsics, matrix, has_3d), sample_key(jpg))

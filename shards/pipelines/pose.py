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

from ..ordered_source import crop_to_input_from, named_outputs, ordered_reader
from ..schema import EXT_IMAGE, EXT_INTRINSICS, EXT_JOINTS2D, EXT_JOINTS3D, EXT_VISIBLE
from .augment import colour_normalisation, crop_to_input
from .steps import decode_image, gpu_outputs, image_size, normalise, values_or_zeros, warp

LABEL_EXTS = [EXT_IMAGE, EXT_JOINTS3D, EXT_JOINTS2D, EXT_VISIBLE, EXT_INTRINSICS]
LABEL_DTYPES = ("uint8", "float32", "float32", "uint8", "float32")    # numpy, per member (RankSource.dtypes)

TRAINING_OUTPUTS = ("image", "joints2d", "depth_rel_mm", "visible", "has_depth", "key")
TARGET_OUTPUTS = ("image", "key")
EVALUATION_OUTPUTS = ("image", "joints3d_mm", "joints2d_px", "visible", "intrinsics", "crop_to_input", "has_3d", "key")


def input_crop(jpg, *, input_size: int, augmentation=None, gpu: bool):
    """The network input (3,S,S), normalised, and the 2x3 affine from stored-crop to input pixels.
    `augmentation`: the sample's (affine, mean, std) from its RankSource (augment_parameters), or
    None for the plain resize and normalisation."""
    hw = image_size(jpg)
    if augmentation is None:
        matrix, norm = crop_to_input(hw, input_size, None, 0), colour_normalisation(None, 0)
    else:
        affine, mean, std = augmentation
        matrix, norm = crop_to_input_from(hw, affine), (mean, std)
    image = normalise(warp(decode_image(jpg, gpu), matrix, input_size, gpu), *norm)
    return image, matrix


def augmentation_of(outputs: dict):
    """(affine, mean, std) among a RankSource's named outputs, or None when it does not augment."""
    return (outputs["affine"], outputs["mean"], outputs["std"]) if "affine" in outputs else None


def joint_labels(joints3d, joints2d, visible, num_joints: int):
    """Raw label members -> joints3d (K,3) mm, has_3d, joints2d (K,2) stored-crop px, visible (K,) float."""
    joints3d, has_3d = values_or_zeros(joints3d, 3 * num_joints)
    joints3d = fn.reshape(joints3d, shape=[num_joints, 3])
    joints2d, _ = values_or_zeros(joints2d, 2 * num_joints)
    joints2d = fn.reshape(joints2d, shape=[num_joints, 2])
    visible, _ = values_or_zeros(fn.cast(visible, dtype=types.FLOAT), num_joints)
    return joints3d, has_3d, joints2d, visible


@pipeline_def(enable_conditionals=True)
def training_pipeline(source, *, input_size: int, num_joints: int, root_index: int, gpu: bool):
    """TRAINING_OUTPUTS: image, joints2d (K,2) in input pixels, depth_rel_mm (K,) = z - z_root,
    visible (K,) float, has_depth, key. `source`: a RankSource over LABEL_EXTS (the global order),
    with its augmentation (or none)."""
    out = named_outputs(source)
    image, matrix = input_crop(out[EXT_IMAGE], input_size=input_size, augmentation=augmentation_of(out), gpu=gpu)
    joints3d, has_3d, joints2d, visible = joint_labels(out[EXT_JOINTS3D], out[EXT_JOINTS2D], out[EXT_VISIBLE],
                                                      num_joints)
    joints2d_input = fn.coord_transform(joints2d, MT=matrix)
    depth_rel = joints3d[:, 2] - joints3d[root_index, 2]
    return (*gpu_outputs(gpu, image, joints2d_input, depth_rel, visible, has_3d), out["key"])


@pipeline_def(enable_conditionals=True)
def target_pipeline(source, *, input_size: int, gpu: bool):
    """TARGET_OUTPUTS: image, key. Images only (no labels are read). `source`: a RankSource over
    [EXT_IMAGE], with its augmentation (or none)."""
    out = named_outputs(source)
    image, _ = input_crop(out[EXT_IMAGE], input_size=input_size, augmentation=augmentation_of(out), gpu=gpu)
    return (*gpu_outputs(gpu, image), out["key"])


@pipeline_def(enable_conditionals=True)
def evaluation_pipeline(source, *, input_size: int, num_joints: int, gpu: bool):
    """EVALUATION_OUTPUTS: image, joints3d_mm (K,3), joints2d_px (K,2) stored-crop px, visible,
    intrinsics (4,), crop_to_input (2,3), has_3d, key. No augmentation; `source`: an EvalSource
    (storage order, each rank its own block, padded; the loader marks the padding)."""
    jpg, joints3d, joints2d, visible, intrinsics, key = ordered_reader(source)
    image, matrix = input_crop(jpg, input_size=input_size, gpu=gpu)
    joints3d, has_3d, joints2d, visible = joint_labels(joints3d, joints2d, visible, num_joints)
    intrinsics, _ = values_or_zeros(intrinsics, 4)
    return (*gpu_outputs(gpu, image, joints3d, joints2d, visible, intrinsics, matrix, has_3d), key)

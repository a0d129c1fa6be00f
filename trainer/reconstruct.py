"""From decoded heatmap voxels back to 3D joints in camera millimetres (docs/method.md, "Decoding").

    (u, v, z) heatmap voxels
      -> (u, v) network-input pixels, z root-relative millimetres        voxels_to_input_px
      -> (u, v) pixels of the stored crop (inverse crop_to_input affine) apply_affine(invert_affine(A))
      -> camera coordinates with the crop's intrinsics and the ground-truth root depth:
         Z = z_rel + Z_root, X = (u - cx) Z / fx, Y = (v - cy) Z / fy     backproject
      -> left hands un-mirrored (X negated) when the crop was mirrored   unmirror

`camera_to_voxels` is the forward mapping (camera joints -> voxels), the exact inverse.

Voxel convention: trainer.heatmaps' (the ground-truth renderer and the decoder), restated here in
float64 numpy and pinned to it by a test. Voxel centres sit at integer coordinates; pixels are
continuous with (0, 0) at the top-left corner of the first pixel (dataprep.common.Crop); with
stride s = input_size / heatmap_size:
    u_vox = u_input / s - 0.5              z_vox = (z_rel / depth_range + 0.5) * depth_bins - 0.5
so the depth bins cover [-range/2, +range/2) around the root joint.
All functions take batched numpy arrays and compute in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from shards import camera
from shards.joints import pose_kind

from .heatmaps import DEPTH_RANGE_MM


@dataclass(frozen=True)
class HeatmapVolume:
    """Geometry of the K x Dz x H x W heatmap volume. heatmap_size defaults to input_size / 4
    (two stride-2 deconvolutions on a /16 patch grid)."""
    input_size: int = 256
    heatmap_size: int | None = None
    depth_bins: int = 64
    depth_range_mm: float = 400.0

    def __post_init__(self):
        if self.heatmap_size is None:
            object.__setattr__(self, "heatmap_size", self.input_size // 4)
        if self.input_size <= 0 or self.heatmap_size <= 0 or self.depth_bins <= 0 or self.depth_range_mm <= 0:
            raise ValueError(f"HeatmapVolume sizes must be positive: {self}")

    @classmethod
    def for_joint_order(cls, joint_order: str, input_size: int = 256, depth_bins: int = 64) -> "HeatmapVolume":
        """400 mm for hands, 2000 mm for bodies (docs/method.md)."""
        return cls(input_size, None, depth_bins, DEPTH_RANGE_MM[pose_kind(joint_order)])

    @property
    def pixels_per_voxel(self) -> float:
        return self.input_size / self.heatmap_size

    @property
    def mm_per_bin(self) -> float:
        return self.depth_range_mm / self.depth_bins


class Reconstruction(NamedTuple):
    joints3d_mm: np.ndarray   # (B, K, 3) camera coordinates (un-mirrored where asked)
    uv_crop_px: np.ndarray    # (B, K, 2) the prediction in stored-crop pixels, for 2D overlays


# -- affine maps ----------------------------------------------------------------------------
def _affines(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (2, 3):
        raise ValueError(f"affine must be (B, 2, 3) or (2, 3), got {a.shape}")
    return a


def apply_affine(affine, uv) -> np.ndarray:
    """(B, 2, 3) affine (or one (2, 3) for all) applied to (B, K, 2) points: A[:, :2] @ p + A[:, 2]."""
    a = _affines(affine)
    uv = np.asarray(uv, np.float64)
    if a.shape[0] == 1:
        a = np.broadcast_to(a, (uv.shape[0], 2, 3))
    if a.shape[0] != uv.shape[0]:
        raise ValueError(f"{a.shape[0]} affines for {uv.shape[0]} samples")
    return np.einsum("bij,bkj->bki", a[:, :, :2], uv) + a[:, None, :, 2]


def invert_affine(affine) -> np.ndarray:
    """Inverse of each (2, 3) affine, as (B, 2, 3). A singular affine raises (a crop of zero size)."""
    a = _affines(affine)
    linear = a[:, :, :2]
    det = np.linalg.det(linear)
    if np.any(np.abs(det) < 1e-12):
        raise ValueError(f"crop_to_input affine is singular for samples {np.flatnonzero(np.abs(det) < 1e-12)[:10].tolist()}")
    inv = np.linalg.inv(linear)
    return np.concatenate([inv, -np.einsum("bij,bj->bi", inv, a[:, :, 2])[:, :, None]], axis=2)


# -- voxels <-> input pixels ----------------------------------------------------------------
def voxels_to_input_px(uvz_vox, volume: HeatmapVolume) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, 3) voxel coordinates -> ((B, K, 2) input pixels, (B, K) root-relative depth mm)."""
    uvz = np.asarray(uvz_vox, np.float64)
    uv_input = (uvz[..., :2] + 0.5) * volume.pixels_per_voxel
    z_rel_mm = ((uvz[..., 2] + 0.5) / volume.depth_bins - 0.5) * volume.depth_range_mm
    return uv_input, z_rel_mm


def input_px_to_voxels(uv_input, z_rel_mm, volume: HeatmapVolume) -> np.ndarray:
    """Inverse of voxels_to_input_px: where the ground-truth Gaussian of a joint is centred."""
    uv = np.asarray(uv_input, np.float64) / volume.pixels_per_voxel - 0.5
    z = (np.asarray(z_rel_mm, np.float64) / volume.depth_range_mm + 0.5) * volume.depth_bins - 0.5
    return np.concatenate([uv, z[..., None]], axis=-1)


# -- camera ---------------------------------------------------------------------------------
def _intrinsics(intrinsics, batch: int) -> np.ndarray:
    k = np.asarray(intrinsics, np.float64)
    if k.ndim == 1:
        k = np.broadcast_to(k, (batch, 4))
    if k.shape != (batch, 4):
        raise ValueError(f"intrinsics must be (B, 4) fx, fy, cx, cy with B = {batch}, got {k.shape}")
    if np.any(k[:, :2] <= 0):
        raise ValueError(f"intrinsics fx, fy must be positive (samples {np.flatnonzero((k[:, :2] <= 0).any(1))[:10].tolist()})")
    return k


def backproject(uv_px, depth_mm, intrinsics) -> np.ndarray:
    """Pixels (B, K, 2) at depths Z (B, K) through a pinhole camera (B, 4) = (fx, fy, cx, cy)
    -> camera coordinates (B, K, 3): X = (u - cx) Z / fx, Y = (v - cy) Z / fy."""
    uv = np.asarray(uv_px, np.float64)
    z = np.asarray(depth_mm, np.float64)
    k = _intrinsics(intrinsics, uv.shape[0])
    fx, fy, cx, cy = (k[:, i, None] for i in range(4))
    return np.stack([(uv[..., 0] - cx) * z / fx, (uv[..., 1] - cy) * z / fy, z], axis=-1)


def project(joints3d_mm, intrinsics) -> np.ndarray:
    """Camera coordinates (B, K, 3) -> pixels (B, K, 2) with (B, 4) intrinsics."""
    j = np.asarray(joints3d_mm, np.float64)
    return camera.project(j, _intrinsics(intrinsics, j.shape[0]))


def unmirror(joints3d_mm, mirrored) -> np.ndarray:
    """Undo the conversion's left-to-right mirroring: negate camera X where `mirrored` (B,) is set.

    A mirrored crop stores the hand as a right hand: pixels flipped and X negated (Crop.points3d),
    with intrinsics that keep projection consistent. Negating X again gives the joints in the
    original (left-hand) camera frame. The same reflection applied to prediction and ground truth
    changes no distance (a reflection is an isometry), so EPE/MPJPE are unchanged, and neither is
    PA-MPJPE (the optimal similarity of the reflected pair is the reflected-conjugate rotation,
    still det +1): only the orientation (handedness, direction of X) of the output changes."""
    j = np.array(joints3d_mm, np.float64)
    m = np.asarray(mirrored, bool).reshape(-1)
    if m.shape[0] != j.shape[0]:
        raise ValueError(f"mirrored must have one flag per sample ({j.shape[0]}), got {m.shape[0]}")
    j[m, :, 0] = -j[m, :, 0]
    return j


# -- the full mapping -----------------------------------------------------------------------
def reconstruct(uvz_vox, crop_to_input, intrinsics, root_depth_mm, volume: HeatmapVolume,
                mirrored=None) -> Reconstruction:
    """Decoded heatmap coordinates -> 3D joints in camera millimetres.

    uvz_vox: (B, K, 3) decoded (u, v, z) in voxel coordinates.
    crop_to_input: (B, 2, 3) affine that took stored-crop pixels to network-input pixels.
    intrinsics: (B, 4) the stored crop's (fx, fy, cx, cy).
    root_depth_mm: (B,) ground-truth Z of the root joint (the root's absolute depth is not
        estimated: standard practice, docs/method.md).
    mirrored: optional (B,) flags from the sample meta; those samples are un-mirrored.
    """
    uvz = np.asarray(uvz_vox, np.float64)
    if uvz.ndim != 3 or uvz.shape[-1] != 3:
        raise ValueError(f"uvz_vox must be (B, K, 3), got {uvz.shape}")
    root_depth = np.asarray(root_depth_mm, np.float64).reshape(-1)
    if root_depth.shape[0] != uvz.shape[0]:
        raise ValueError(f"root_depth_mm must have one value per sample ({uvz.shape[0]}), got {root_depth.shape[0]}")
    if np.any(root_depth <= 0):
        raise ValueError(f"root depth must be in front of the camera (samples {np.flatnonzero(root_depth <= 0)[:10].tolist()})")
    uv_input, z_rel = voxels_to_input_px(uvz, volume)
    uv_crop = apply_affine(invert_affine(crop_to_input), uv_input)
    joints = backproject(uv_crop, z_rel + root_depth[:, None], intrinsics)
    if mirrored is not None:
        joints = unmirror(joints, mirrored)
    return Reconstruction(joints, uv_crop)


def camera_to_voxels(joints3d_mm, intrinsics, crop_to_input, volume: HeatmapVolume, root: int = 0) -> np.ndarray:
    """Forward mapping, the exact inverse of `reconstruct` (without un-mirroring): joints in the
    stored crop's camera frame -> (B, K, 3) voxel coordinates, depth relative to joint `root`."""
    j = np.asarray(joints3d_mm, np.float64)
    uv_crop = project(j, intrinsics)
    uv_input = apply_affine(crop_to_input, uv_crop)
    z_rel = j[..., 2] - j[:, root, None, 2]
    return input_px_to_voxels(uv_input, z_rel, volume)

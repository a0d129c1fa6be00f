"""Undistorted crops: the crop an ideal pinhole camera would have taken.

Converters whose images carry lens distortion (Panoptic's HD cameras, Human3.6M) store crops
resampled so that the crop camera is the pinhole part of the calibration: each crop pixel centre
is mapped back through the crop to ideal original pixels, pushed through the lens model to
where the lens imaged that ray, and sampled there (bilinear). Projecting the camera-frame joints
with the crop intrinsics then lands on the image content exactly.

Coordinates follow the crops' convention (dataprep.common.Crop): pixel (i, j) of an image covers
[j, j + 1) x [i, i + 1), so its centre is (j + 0.5, i + 0.5).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from .common import Crop

# (N.., 2) ideal pixels -> (distorted pixels (N.., 2), one-to-one flag (N..)), both in the crop
# convention above.
Distortion = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def crop_source_pixels(crop: Crop, distort: Distortion) -> np.ndarray:
    """(size, size, 2) original-image positions (distorted, crop convention) of the crop's
    pixel centres; positions where the lens model folds back are sent far outside."""
    inv = np.linalg.inv(np.vstack([crop.matrix, [0.0, 0.0, 1.0]]))
    jj, ii = np.meshgrid(np.arange(crop.size) + 0.5, np.arange(crop.size) + 0.5)
    ideal = np.stack([inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2],
                      inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2]], axis=-1)
    src, ok = distort(ideal)
    src = np.array(src, np.float64)
    src[~ok] = -1e6                        # folded region: outside, filled with black
    return src


def remap(image: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (HxW or HxWx3 uint8) at `src` (crop-convention positions);
    outside the image is black."""
    coords = [src[..., 1] - 0.5, src[..., 0] - 0.5]     # position -> array index (row, column)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty(src.shape[:2] + (planes.shape[2],), np.float32)
    for c in range(planes.shape[2]):
        ndimage.map_coordinates(planes[..., c], coords, output=out[..., c], order=1, mode="constant", cval=0.0)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def undistorted_crop(image: np.ndarray, crop: Crop, distort: Distortion) -> np.ndarray:
    """The crop of `image` as the pinhole crop camera sees it (mirroring included)."""
    return remap(image, crop_source_pixels(crop, distort))


def undistorted_mask(mask: np.ndarray, crop: Crop, distort: Distortion) -> np.ndarray:
    """Binary 0/255 mask resampled like the image (bilinear, then thresholded)."""
    return np.where(undistorted_crop(mask.astype(np.uint8), crop, distort) >= 128, 255, 0).astype(np.uint8)


def undistort_points(uv: np.ndarray, distort: Distortion, iterations: int = 50) -> np.ndarray:
    """Ideal pixels whose distorted images are `uv`: fixed-point iteration (as OpenCV's
    undistortPoints), converged to ~1e-9 px for the mild lenses of the datasets."""
    uv = np.asarray(uv, np.float64)
    ideal = uv.copy()
    for _ in range(iterations):
        ideal = ideal + (uv - distort(ideal)[0])
    return ideal

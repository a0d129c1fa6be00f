"""What the body converters share: joint tables (SMPL-24 -> h36m17, left/right flips) and the
crop around a body with its stored sample.

Joint orders (docs/datasets.md):
h36m17   0 pelvis, 1 r_hip, 2 r_knee, 3 r_ankle, 4 l_hip, 5 l_knee, 6 l_ankle, 7 spine, 8 thorax,
         9 neck/nose, 10 head, 11 l_shoulder, 12 l_elbow, 13 l_wrist, 14 r_shoulder, 15 r_elbow, 16 r_wrist
SMPL-24  0 pelvis, 1 l_hip, 2 r_hip, 3 spine1, 4 l_knee, 5 r_knee, 6 spine2, 7 l_ankle, 8 r_ankle,
         9 spine3, 10 l_foot, 11 r_foot, 12 neck, 13 l_collar, 14 r_collar, 15 head, 16 l_shoulder,
         17 r_shoulder, 18 l_elbow, 19 r_elbow, 20 l_wrist, 21 r_wrist, 22 l_hand, 23 r_hand
"""
from __future__ import annotations

import numpy as np

from shards.joints import JOINT_ORDERS
from shards.schema import Sample, SampleError

from .common import Crop, crop_around
from .lens import Distortion, undistorted_crop


H36M17 = JOINT_ORDERS["h36m17"]
SMPL24 = ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle", "spine3",
          "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder", "r_shoulder", "l_elbow",
          "r_elbow", "l_wrist", "r_wrist", "l_hand", "r_hand")

# h36m17[SMPL_EXACT_H36M] = smpl24[SMPL_EXACT_SMPL]: the joints both skeletons define.
SMPL_EXACT_H36M = np.array([0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16])
SMPL_EXACT_SMPL = np.array([0, 2, 5, 8, 1, 4, 7, 16, 18, 20, 17, 19, 21])
# Spine, thorax, neck/nose and head have no SMPL counterpart. Chosen by bone length: H36M's
# pelvis->spine (~233 mm) ~ SMPL pelvis->spine2, pelvis->thorax (~490 mm) ~ pelvis->neck;
# neck/nose sits ~120 mm above the thorax like SMPL's head joint, and H36M's head joint
# (near the crown) ~ one neck->head length beyond SMPL's head joint.
SMPL_APPROXIMATION = {
    "spine": "smpl spine2 (6)",
    "thorax": "smpl neck (12)",
    "neck_nose": "smpl head (15)",
    "head": "smpl head (15) + 1.0 x (head (15) - neck (12))",
}
APPROXIMATED_H36M = [7, 8, 9, 10]
# Left <-> right relabelling (a mirror image swaps which joint is anatomically left).
SMPL_FLIP = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22])
H36M17_FLIP = np.array([0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13])
# SPIN/HMR/VIBE's "H36M-17" (SPIN's J_regressor_h36m.npy) puts the left leg first.
LEFT_FIRST_TO_H36M17 = np.array([0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])

BODY_MIN_SIDE = 64.0   # px: smallest crop side in the original image


def smpl24_to_h36m17(j24: np.ndarray) -> np.ndarray:
    """(..., 24, 3) SMPL joints -> (..., 17, 3) h36m17: the exact subset plus the documented
    approximations (SMPL_APPROXIMATION) for spine, thorax, neck/nose and head."""
    j24 = np.asarray(j24, np.float64)
    out = np.empty(j24.shape[:-2] + (17, j24.shape[-1]))
    out[..., SMPL_EXACT_H36M, :] = j24[..., SMPL_EXACT_SMPL, :]
    out[..., 7, :] = j24[..., 6, :]
    out[..., 8, :] = j24[..., 12, :]
    out[..., 9, :] = j24[..., 15, :]
    out[..., 10, :] = 2.0 * j24[..., 15, :] - j24[..., 12, :]
    return out


def crop_sample(crop: Crop, key: str, image: np.ndarray, joints: np.ndarray, uv: np.ndarray, camera,
                meta: dict, mask: np.ndarray | None = None, distort: Distortion | None = None) -> Sample:
    """The stored body sample: image, camera-frame joints (mm) and their projection `uv`
    (original pixels, pinhole `camera` = fx, fy, cx, cy) taken through `crop`; every joint
    labelled. `mask` is already cropped. With `distort` (the lens model of the original image)
    the crop is resampled to the pinhole camera (dataprep.lens)."""
    cropped = crop.image(image) if distort is None else undistorted_crop(image, crop, distort)
    return Sample(key=key, image=cropped, mask=mask, joints3d_mm=crop.points3d(joints),
                  joints2d_px=crop.points(uv), visible=np.ones(len(joints), bool),
                  intrinsics=crop.intrinsics(*camera), meta=meta)

def body_crop(uv: np.ndarray, size: int, context: float) -> Crop:
    """Square crop around all 2D joints of one body (the head joint is near the crown and the
    ankles at the feet, so `context` x their box holds the whole person)."""
    return crop_around(np.asarray(uv, np.float64), size, context, min_side=BODY_MIN_SIDE)


def in_front(xyz_mm: np.ndarray, file, sample: str) -> None:
    if np.any(xyz_mm[:, 2] <= 0):
        raise SampleError("a joint lies at or behind the camera (z <= 0)", file=str(file), sample=sample)

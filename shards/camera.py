"""The pinhole camera of the shards: camera-frame millimetres (x right, y down, z forward) and
intrinsics (fx, fy, cx, cy) in pixels, with (0, 0) the top-left corner of the first pixel."""
from __future__ import annotations

import numpy as np


def project(points, intrinsics) -> np.ndarray:
    """Pinhole projection of camera-frame points (..., 3) -> pixels (..., 2). `intrinsics` is one
    (fx, fy, cx, cy) for every point, or a (B, 4) array for a batch of (B, K, 3) points. The
    result keeps the points' precision (float32 points and one camera give float32 pixels)."""
    points = np.asarray(points)
    if np.ndim(intrinsics) == 1:
        fx, fy, cx, cy = (float(v) for v in intrinsics)
    else:
        k = np.asarray(intrinsics, np.float64)
        fx, fy, cx, cy = (k[..., i, None] for i in range(4))
    return np.stack([fx * points[..., 0] / points[..., 2] + cx, fy * points[..., 1] / points[..., 2] + cy], axis=-1)

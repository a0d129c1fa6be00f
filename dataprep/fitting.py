"""Fitting cameras and rigid motions to point correspondences."""
from __future__ import annotations

import numpy as np

from shards.camera import project


def fit_intrinsics(uv: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares pinhole (fx, fy, cx, cy) from 2D<->3D correspondences (u z = fx x + cx z,
    as public 3DHP/H36M code does) and the largest reprojection residual in pixels."""
    uv, xyz = uv.reshape(-1, 2), xyz.reshape(-1, 3)
    z = xyz[:, 2]
    fx, cx = np.linalg.lstsq(np.stack([xyz[:, 0], z], 1), uv[:, 0] * z, rcond=None)[0]
    fy, cy = np.linalg.lstsq(np.stack([xyz[:, 1], z], 1), uv[:, 1] * z, rcond=None)[0]
    k = np.array([fx, fy, cx, cy])
    return k, float(np.abs(project(xyz, k) - uv).max())


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (det +1) and translation taking src points onto dst (Kabsch, no scale)."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - ms).T @ (dst - md))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, md - r @ ms

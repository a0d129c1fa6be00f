"""3D Gaussian heatmaps (docs/method.md Stage 2, Eq. 4-5): ground-truth rendering, decoding, L_pose.

Voxel coordinates (u, v, z): u along the heatmap width, v along its height, z along the depth
bins; voxel centres sit at integer coordinates, so the volume spans [-0.5, size - 0.5) on each
axis. Input pixels use the shards' continuous convention ((0, 0) is the top-left corner of the
first pixel, dataprep.common.Crop), so with stride s = input / heatmap size:
    u_voxel = u_px / s - 0.5                       (and back: u_px = (u_voxel + 0.5) * s)
    z_voxel = (z_rel_mm / depth_range + 0.5) * Dz - 0.5      z_rel = joint depth - root depth
i.e. the depth bins cover [-range/2, +range/2) around the root (400 mm hands, 2000 mm bodies).

Ground truth is rendered on the device of the joints (the model's device) from three 1-D
Gaussians (the 3D Gaussian is separable), never in the data pipeline: a 21 x 64^3 float target is
22 MB per sample.

Public API
    DEPTH_RANGE_MM = {"hand": 400.0, "body": 2000.0};  DEFAULT_SIGMA = 2.0
    render_heatmaps(uvz (B,K,3), shape (D,H,W), sigma=2.0) -> (B,K,D,H,W) float32, peak 1
    decode_heatmaps(heatmaps (B,K,D,H,W), method="argmax" | "soft_argmax") -> uvz (B,K,3)
    joint_weights(uvz, visible, shape) -> (B,K) float: visible and inside the volume
    pose_loss(heatmaps, uvz, visible, sigma=2.0) -> scalar        Eq. 5
    joints_to_voxels(joints2d_px (B,K,2), depth_rel_mm (B,K), input_size, heatmap_shape,
                     depth_range_mm) -> uvz (B,K,3)
    voxels_to_joints(uvz, input_size, heatmap_shape, depth_range_mm)
        -> (joints2d_px (B,K,2), depth_rel_mm (B,K))
"""
from __future__ import annotations

import torch

DEPTH_RANGE_MM = {"hand": 400.0, "body": 2000.0}
DEFAULT_SIGMA = 2.0


def _size2(size) -> tuple[int, int]:
    """input size as (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def joints_to_voxels(joints2d_px, depth_rel_mm, input_size, heatmap_shape=(64, 64, 64),
                     depth_range_mm=DEPTH_RANGE_MM["hand"]) -> torch.Tensor:
    """Input-pixel 2D joints (B,K,2) and root-relative depths in mm (B,K) -> voxel (u, v, z)."""
    D, H, W = heatmap_shape
    in_h, in_w = _size2(input_size)
    u = joints2d_px[..., 0] * (W / in_w) - 0.5
    v = joints2d_px[..., 1] * (H / in_h) - 0.5
    z = (depth_rel_mm / depth_range_mm + 0.5) * D - 0.5
    return torch.stack([u, v, z], dim=-1).float()


def voxels_to_joints(uvz, input_size, heatmap_shape=(64, 64, 64), depth_range_mm=DEPTH_RANGE_MM["hand"]):
    """Inverse of joints_to_voxels -> (joints2d_px (B,K,2), depth_rel_mm (B,K))."""
    D, H, W = heatmap_shape
    in_h, in_w = _size2(input_size)
    u_px = (uvz[..., 0] + 0.5) * (in_w / W)
    v_px = (uvz[..., 1] + 0.5) * (in_h / H)
    depth = ((uvz[..., 2] + 0.5) / D - 0.5) * depth_range_mm
    return torch.stack([u_px, v_px], dim=-1), depth


def render_heatmaps(uvz: torch.Tensor, shape, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Unnormalised 3D Gaussians exp(-|p - (u,v,z)|^2 / (2 sigma^2)) sampled at voxel centres,
    (B, K, D, H, W) float32 on uvz's device. Rendered for every joint; weights decide which count."""
    D, H, W = shape
    uvz = uvz.float()
    gx, gy, gz = (_gaussian_1d(uvz[..., i], n, sigma) for i, n in ((0, W), (1, H), (2, D)))
    return gz[..., :, None, None] * gy[..., None, :, None] * gx[..., None, None, :]


def joint_weights(uvz: torch.Tensor, visible: torch.Tensor, shape) -> torch.Tensor:
    """(B, K) float: 1 for a visible joint whose centre lies inside the volume, else 0."""
    D, H, W = shape
    limits = torch.tensor([W, H, D], device=uvz.device, dtype=uvz.dtype)
    inside = ((uvz >= -0.5) & (uvz < limits - 0.5)).all(dim=-1)
    return (inside & visible.to(uvz.device, torch.bool)).float()


def pose_loss(heatmaps: torch.Tensor, uvz: torch.Tensor, visible: torch.Tensor,
              sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Eq. 5: mean over samples, joints and voxels of w * (heatmap - gt)^2 (ViTPose's
    target-weighted MSE), with w = 0 for invisible joints and joints outside the volume.
    Computed in float32.

    The volume is the largest tensor of a fine-tuning step (21 x 64^3 floats per sample at the
    paper's size), and the plain expression walks it about ten times (render, subtract, square,
    mean, and as many again backwards). _HeatmapMSE walks it three times: one fused
    `heatmaps - gz*gy*gx` (the Gaussian is separable, so the target is never stored on its own),
    one norm, and one multiply for the gradient. Equal to the plain expression within float
    rounding (tests/trainer/test_heatmaps.py)."""
    shape = heatmaps.shape[-3:]
    D, H, W = shape
    uvz = uvz.float()
    gx, gy, gz = (_gaussian_1d(uvz[..., i], n, sigma) for i, n in ((0, W), (1, H), (2, D)))
    weights = joint_weights(uvz, visible, shape)
    return _HeatmapMSE.apply(heatmaps.float(), gz[..., :, None] * gy[..., None, :], gx, weights)


def _gaussian_1d(centre: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, K) centres -> (B, K, size) exp(-(i - centre)^2 / (2 sigma^2)) at voxel centres i."""
    grid = torch.arange(size, device=centre.device, dtype=torch.float32)
    return torch.exp(-(grid - centre[..., None]) ** 2 / (2 * sigma ** 2))


class _HeatmapMSE(torch.autograd.Function):
    """mean_{b,k}(w_bk * mean_{d,y,x}(h - g_zy * g_x)^2), gradient for h only."""

    @staticmethod
    def forward(ctx, heatmaps, g_zy, g_x, weights):
        # g_zy (B,K,D,H) and g_x (B,K,W) broadcast to the volume inside addcmul: no target tensor.
        diff = torch.addcmul(heatmaps, g_zy[..., None], g_x[..., None, None, :], value=-1.0)
        voxels = diff.shape[-3] * diff.shape[-2] * diff.shape[-1]
        per_joint = torch.linalg.vector_norm(diff, dim=(2, 3, 4)).square() / voxels
        ctx.save_for_backward(diff, weights)
        ctx.voxels = voxels
        return (per_joint * weights).mean()

    @staticmethod
    def backward(ctx, grad_output):
        diff, weights = ctx.saved_tensors
        scale = grad_output * 2.0 / (ctx.voxels * weights.numel()) * weights
        return diff * scale[..., None, None, None], None, None, None


def decode_heatmaps(heatmaps: torch.Tensor, method: str = "argmax") -> torch.Tensor:
    """(B, K, D, H, W) -> (B, K, 3) voxel (u, v, z).

    "argmax": the peak voxel, refined per axis by the vertex of the parabola through the log of
    the three values around it (exact for a Gaussian; at a border the three-value window shifts
    inward). Falls back to the voxel where the log-values are not concave; the refinement is
    limited to +-0.5 voxel.
    "soft_argmax": expectation of the voxel coordinates under the heatmap clipped at 0 and
    normalised (Integral pose regression); differentiable, but pulled inward near the borders."""
    if method == "argmax":
        return _decode_argmax(heatmaps.detach().float())
    if method == "soft_argmax":
        return _decode_soft_argmax(heatmaps.float())
    raise ValueError(f"unknown heatmap decoding {method!r}; choose 'argmax' or 'soft_argmax'")


def _decode_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    B, K, D, H, W = heatmaps.shape
    flat = heatmaps.reshape(B, K, -1)
    peak = flat.argmax(dim=-1)
    peak_zyx = (peak // (H * W), (peak // W) % H, peak % W)
    strides = (H * W, W, 1)
    refined = []
    for centre, size, stride in zip(peak_zyx, (D, H, W), strides):
        if size < 3:
            refined.append(centre.float())
            continue
        window = centre.clamp(1, size - 2)
        neighbours = [peak + (window + offset - centre) * stride for offset in (-1, 0, 1)]
        log_m, log_0, log_p = (flat.gather(-1, i[..., None])[..., 0].clamp_min(1e-30).log() for i in neighbours)
        curvature = log_m - 2 * log_0 + log_p  # < 0 at a proper peak
        vertex = window + 0.5 * (log_m - log_p) / curvature.clamp_max(-1e-12)
        position = torch.where(curvature < 0, vertex, centre.float())
        refined.append(torch.minimum(torch.maximum(position, centre - 0.5), centre + 0.5))
    z, v, u = refined
    return torch.stack([u, v, z], dim=-1)


def _decode_soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    B, K, D, H, W = heatmaps.shape
    mass = heatmaps.clamp_min(0)
    total = mass.sum(dim=(2, 3, 4)).clamp_min(1e-12)

    def expectation(marginal, size):  # marginal (B, K, size)
        return (marginal * torch.arange(size, device=mass.device, dtype=mass.dtype)).sum(-1) / total

    u = expectation(mass.sum(dim=(2, 3)), W)
    v = expectation(mass.sum(dim=(2, 4)), H)
    z = expectation(mass.sum(dim=(3, 4)), D)
    return torch.stack([u, v, z], dim=-1)

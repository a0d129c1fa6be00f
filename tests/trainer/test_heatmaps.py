"""3D heatmaps (trainer.heatmaps): rendering, decoding, conversions, L_pose."""
import math

import pytest
import torch

from trainer.heatmaps import (DEPTH_RANGE_MM, decode_heatmaps, joint_weights, joints_to_voxels, pose_loss,
                              render_heatmaps, voxels_to_joints)


def random_inside(n, shape, generator, margin=0.0):
    """(1, n, 3) voxel (u, v, z) uniformly inside [-0.5 + margin, size - 0.5 - margin)."""
    D, H, W = shape
    sizes = torch.tensor([W, H, D], dtype=torch.float32)
    low = -0.5 + margin
    return low + torch.rand(1, n, 3, generator=generator) * (sizes - 2 * margin - 1e-4)


def test_decode_render_roundtrip_argmax_anywhere_inside():
    g = torch.Generator().manual_seed(0)
    shape = (12, 20, 16)                     # D, H, W: distinct on purpose
    uvz = random_inside(300, shape, g)
    corners = torch.tensor([[[-0.5, -0.5, -0.5], [15.4999, 19.4999, 11.4999], [-0.5, 19.4999, 5.0],
                             [7.5, 9.5, 3.5], [0.0, 0.0, 0.0], [15.0, 19.0, 11.0]]])
    uvz = torch.cat([uvz, corners], dim=1)
    for sigma in (1.0, 2.0, 2.5):
        decoded = decode_heatmaps(render_heatmaps(uvz, shape, sigma), "argmax")
        error = (decoded - uvz).abs().max().item()
        assert error < 0.1, (sigma, error)
        assert error < 1e-3  # exact for a Gaussian up to float32 rounding


def test_decode_render_roundtrip_full_volume():
    g = torch.Generator().manual_seed(1)
    uvz = random_inside(21, (64, 64, 64), g)
    decoded = decode_heatmaps(render_heatmaps(uvz, (64, 64, 64), 2.0))
    assert (decoded - uvz).abs().max().item() < 0.1


def test_soft_argmax_away_from_borders_and_differentiable():
    g = torch.Generator().manual_seed(2)
    shape = (24, 24, 24)
    uvz = random_inside(50, shape, g, margin=6.0)   # 3 sigma from the borders
    heatmaps = render_heatmaps(uvz, shape, 2.0).requires_grad_(True)
    decoded = decode_heatmaps(heatmaps, "soft_argmax")
    assert (decoded - uvz).abs().max().item() < 0.1
    decoded.sum().backward()
    assert heatmaps.grad is not None and torch.isfinite(heatmaps.grad).all()
    with pytest.raises(ValueError, match="unknown heatmap decoding"):
        decode_heatmaps(heatmaps, "centroid")


def test_render_known_values():
    uvz = torch.tensor([[[3.0, 5.0, 2.0]]])
    hm = render_heatmaps(uvz, (6, 8, 7), sigma=2.0)
    assert hm.shape == (1, 1, 6, 8, 7) and hm.dtype == torch.float32
    assert hm[0, 0, 2, 5, 3].item() == 1.0                                 # (z, v, u) indexing
    assert hm[0, 0, 2, 5, 4].item() == pytest.approx(math.exp(-1 / 8))    # one voxel along u
    assert hm[0, 0, 3, 6, 4].item() == pytest.approx(math.exp(-3 / 8))    # one along each axis
    assert hm.argmax().item() == (2 * 8 + 5) * 7 + 3


def test_voxel_conversions_known_values_and_roundtrip():
    # 256-px input, 64^3 volume: stride 4 px; pixel 0 (left edge) is voxel -0.5, the centre of
    # voxel 0 is pixel 2.0; the root (depth 0) sits between bins 31 and 32.
    joints = torch.tensor([[[0.0, 2.0], [256.0, 130.0]]])
    depth = torch.tensor([[0.0, -200.0]])
    uvz = joints_to_voxels(joints, depth, 256, (64, 64, 64), DEPTH_RANGE_MM["hand"])
    torch.testing.assert_close(uvz, torch.tensor([[[-0.5, 0.0, 31.5], [63.5, 32.0, -0.5]]]))
    body = joints_to_voxels(joints, torch.tensor([[1000.0, 0.0]]), 256, (64, 64, 64), DEPTH_RANGE_MM["body"])
    assert body[0, 0, 2].item() == pytest.approx(63.5)
    back_px, back_depth = voxels_to_joints(uvz, 256, (64, 64, 64), 400.0)
    torch.testing.assert_close(back_px, joints)
    torch.testing.assert_close(back_depth, depth)
    # Non-square input and volume.
    uvz = joints_to_voxels(torch.tensor([[[100.0, 50.0]]]), torch.tensor([[37.0]]), (128, 192), (32, 32, 48), 400.0)
    px, d = voxels_to_joints(uvz, (128, 192), (32, 32, 48), 400.0)
    torch.testing.assert_close(px, torch.tensor([[[100.0, 50.0]]]))
    torch.testing.assert_close(d, torch.tensor([[37.0]]))


def test_pose_loss_known_values_and_weights():
    shape = (8, 10, 10)
    uvz = torch.tensor([[[4.0, 4.0, 4.0], [2.0, 3.0, 1.0], [20.0, 3.0, 1.0]]])  # third is outside
    visible = torch.tensor([[True, False, True]])
    gt = render_heatmaps(uvz, shape, 2.0)
    assert joint_weights(uvz, visible, shape).tolist() == [[1.0, 0.0, 0.0]]
    assert pose_loss(gt, uvz, visible).item() == pytest.approx(0.0, abs=1e-12)   # fused: FMA rounding
    # Zero prediction: only joint 0 counts, averaged over all 3 joints and 800 voxels.
    zero = torch.zeros(1, 3, *shape, requires_grad=True)
    loss = pose_loss(zero, uvz, visible)
    expected = (gt[0, 0] ** 2).sum() / (3 * 800)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(zero.grad[0, 1:] == 0) and torch.any(zero.grad[0, 0] != 0)
    # A prediction that is wrong only on the invisible joint costs nothing.
    wrong = gt.clone()
    wrong[0, 1] = 5.0
    assert pose_loss(wrong, uvz, visible).item() == pytest.approx(0.0, abs=1e-12)


def test_pose_loss_equals_the_plain_expression_and_its_gradient():
    """The fused loss (no stored target volume) against the textbook form, value and gradient."""
    g = torch.Generator().manual_seed(3)
    shape = (6, 9, 11)
    uvz = torch.cat([random_inside(5, shape, g), torch.tensor([[[30.0, 2.0, 2.0]]])], dim=1).repeat(2, 1, 1)
    uvz[1] += 0.7
    visible = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    for sigma in (1.5, 2.0):
        heatmaps = torch.randn(2, 6, *shape, generator=g, requires_grad=True)
        fused = pose_loss(heatmaps, uvz, visible, sigma)
        (grad_fused,) = torch.autograd.grad(fused, heatmaps)
        gt = render_heatmaps(uvz, shape, sigma)
        plain = (((heatmaps - gt) ** 2).mean(dim=(2, 3, 4)) * joint_weights(uvz, visible, shape)).mean()
        (grad_plain,) = torch.autograd.grad(plain, heatmaps)
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-5, atol=1e-9)
        assert torch.all(grad_fused[:, 2][0] == 0) and torch.all(grad_fused[1, 1] == 0)   # invisible joints
        assert torch.all(grad_fused[:, 5] == 0)                                           # outside the volume

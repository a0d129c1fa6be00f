"""trainer.reconstruct: voxels -> input px -> crop px -> camera mm, against the forward mapping,
against dataprep's Crop (mirrored left hands included), and against exact one-voxel steps."""
import math

import numpy as np
import pytest

from dataprep.common import Crop, crop_around
from shards.schema import project as project_one
from trainer.metrics import epe, pa_mpjpe
from trainer.reconstruct import (HeatmapVolume, apply_affine, backproject, camera_to_voxels, invert_affine,
                                 input_px_to_voxels, reconstruct, unmirror, voxels_to_input_px)


def hands(batch, seed=0):
    """Hand-sized joints (about +-80 mm around a wrist 450-700 mm in front of the camera)."""
    rng = np.random.default_rng(seed)
    wrist = np.stack([rng.uniform(-80, 80, batch), rng.uniform(-60, 60, batch), rng.uniform(450, 700, batch)], 1)
    return wrist[:, None] + rng.uniform(-80, 80, size=(batch, 21, 3)) * np.r_[1, 1, 0.8]


def augmentation_affine(rng, batch, crop_size=288, input_size=256):
    """Rotation + scale + translation about the crop centre, like the training augmentation."""
    out = []
    for _ in range(batch):
        a, s = rng.uniform(-0.6, 0.6), rng.uniform(0.8, 1.2) * input_size / crop_size
        lin = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        t = np.array([input_size / 2, input_size / 2]) + rng.uniform(-15, 15, 2) - lin @ [crop_size / 2, crop_size / 2]
        out.append(np.concatenate([lin, t[:, None]], 1))
    return np.stack(out)


def resize_affine(crop_size: float, input_size: float) -> np.ndarray:
    """(2, 3) crop_to_input affine of a plain resize of the whole square crop to the input."""
    s = input_size / crop_size
    return np.array([[s, 0.0, 0.0], [0.0, s, 0.0]])


def test_forward_then_back_reconstructs_within_half_a_millimetre():
    rng = np.random.default_rng(1)
    joints = hands(8)
    # crop cameras: focal 300-900 px, principal point anywhere near the crop
    intrinsics = np.stack([rng.uniform(300, 900, 8), rng.uniform(300, 900, 8),
                           rng.uniform(100, 190, 8), rng.uniform(100, 190, 8)], 1)
    affine = augmentation_affine(rng, 8)
    volume = HeatmapVolume.for_joint_order("hand21")
    vox = camera_to_voxels(joints, intrinsics, affine, volume, root=0)
    assert volume.heatmap_size == 64 and volume.depth_range_mm == 400.0
    assert vox[..., 2].min() >= 0 and vox[..., 2].max() < 64          # inside the depth range
    out = reconstruct(vox, affine, intrinsics, joints[:, 0, 2], volume)
    err = np.linalg.norm(out.joints3d_mm - joints, axis=-1)
    assert err.max() < 0.5
    assert err.max() < 1e-6                                            # in fact exact up to rounding
    np.testing.assert_allclose(out.uv_crop_px, np.stack([project_one(j, k) for j, k in zip(joints, intrinsics)]),
                               atol=1e-6)


def test_mirrored_left_hand_through_dataprep_crop():
    """A left hand in an original 640x480 image, converted the way dataprep does (mirrored crop),
    voxelised from the stored joints2d with docs/method.md's formulas written out here, comes back in
    the original camera frame after un-mirroring."""
    fx, fy, cx, cy = 600.0, 610.0, 320.0, 240.0
    joints = hands(1, seed=2)[0]
    uv = np.stack([fx * joints[:, 0] / joints[:, 2] + cx, fy * joints[:, 1] / joints[:, 2] + cy], 1)
    crop = crop_around(uv, 288, 1.5, mirror=True)
    stored_joints = crop.points3d(joints)                     # X negated: now a right hand
    stored_uv = crop.points(uv).astype(np.float64)
    stored_k = crop.intrinsics(fx, fy, cx, cy).astype(np.float64)
    np.testing.assert_allclose(project_one(stored_joints, stored_k), stored_uv, atol=1e-2)

    volume = HeatmapVolume(input_size=256, depth_bins=64, depth_range_mm=400.0)
    to_input = resize_affine(288, 256)
    uv_vox = stored_uv * (256 / 288) / 4 - 0.5                # voxel centres at integers
    z_vox = ((stored_joints[:, 2] - stored_joints[0, 2]) / 400.0 + 0.5) * 64 - 0.5
    vox = np.concatenate([uv_vox, z_vox[:, None]], 1)[None]
    out = reconstruct(vox, to_input, stored_k[None], [stored_joints[0, 2]], volume, mirrored=[True])
    # float32 storage of crop coordinates and intrinsics limits the agreement to ~0.01 mm
    assert np.linalg.norm(out.joints3d_mm[0] - joints, axis=-1).max() < 0.5
    assert np.linalg.norm(out.joints3d_mm[0] - joints, axis=-1).max() < 0.05
    np.testing.assert_allclose(out.uv_crop_px[0], stored_uv, atol=1e-3)
    # without un-mirroring it is the stored (mirrored) hand
    plain = reconstruct(vox, to_input, stored_k[None], [stored_joints[0, 2]], volume)
    assert np.linalg.norm(plain.joints3d_mm[0] - stored_joints, axis=-1).max() < 0.05


def test_one_voxel_steps_have_the_exact_metric_size():
    volume = HeatmapVolume(input_size=256, heatmap_size=64, depth_bins=64, depth_range_mm=2000.0)
    intrinsics = np.array([[500.0, 400.0, 256.0, 256.0]])      # principal point at the 512 px crop centre
    to_input = resize_affine(512, 256)                       # input px = crop px / 2
    base = np.array([[[31.5, 31.5, 31.5]]])                  # the crop centre, at the root depth
    step = np.array([[[1.0, 0.0, 0.0]]]), np.array([[[0.0, 1.0, 0.0]]]), np.array([[[0.0, 0.0, 1.0]]])
    z_root = 3000.0
    at = lambda v: reconstruct(v, to_input, intrinsics, [z_root], volume).joints3d_mm[0, 0]
    np.testing.assert_allclose(at(base), [0.0, 0.0, z_root], atol=1e-9)
    # u: 1 voxel = 4 input px = 8 crop px -> X = 8 * Z / fx
    np.testing.assert_allclose(at(base + step[0]), [8 * z_root / 500.0, 0, z_root], atol=1e-9)
    np.testing.assert_allclose(at(base + step[1]), [0, 8 * z_root / 400.0, z_root], atol=1e-9)
    # z: 1 bin = 2000 / 64 mm; X, Y stay 0 on the optical axis
    np.testing.assert_allclose(at(base + step[2]), [0, 0, z_root + 2000 / 64], atol=1e-9)
    # the volume's outer faces: voxel -0.5 is input pixel 0, 63.5 is 256; depth +-1000 mm
    uv, z = voxels_to_input_px(np.array([[[-0.5, 63.5, -0.5], [0, 0, 63.5]]]), volume)
    np.testing.assert_allclose(uv, [[[0.0, 256.0], [2.0, 2.0]]])
    np.testing.assert_allclose(z, [[-1000.0, 1000.0]])       # the volume is centred on the root


def test_same_convention_as_the_heatmap_renderer():
    """The renderer places ground-truth Gaussians with trainer.heatmaps.joints_to_voxels; decoding
    must invert exactly that."""
    import torch
    from trainer import heatmaps
    rng = np.random.default_rng(6)
    uv = rng.uniform(0, 256, size=(3, 21, 2))
    z = rng.uniform(-200, 200, size=(3, 21))
    volume = HeatmapVolume.for_joint_order("hand21")
    theirs = heatmaps.joints_to_voxels(torch.from_numpy(uv), torch.from_numpy(z), 256, (64, 64, 64),
                                       heatmaps.DEPTH_RANGE_MM["hand"]).double().numpy()
    np.testing.assert_allclose(input_px_to_voxels(uv, z, volume), theirs, atol=1e-4)   # theirs is float32
    back_uv, back_z = heatmaps.voxels_to_joints(torch.from_numpy(theirs), 256, (64, 64, 64), 400.0)
    ours_uv, ours_z = voxels_to_input_px(theirs, volume)
    np.testing.assert_allclose(ours_uv, back_uv.double().numpy(), atol=1e-3)
    np.testing.assert_allclose(ours_z, back_z.double().numpy(), atol=1e-3)


def test_affine_helpers_invert():
    rng = np.random.default_rng(3)
    a = augmentation_affine(rng, 4)
    pts = rng.uniform(0, 288, size=(4, 21, 2))
    np.testing.assert_allclose(apply_affine(invert_affine(a), apply_affine(a, pts)), pts, atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((2, 3)))


def test_unmirror_changes_orientation_not_errors():
    rng = np.random.default_rng(4)
    gt = hands(6, seed=5)
    pred = gt + rng.normal(scale=15, size=gt.shape)
    flags = np.ones(6, bool)
    np.testing.assert_allclose(epe(unmirror(pred, flags), unmirror(gt, flags)), epe(pred, gt), rtol=1e-12)
    np.testing.assert_allclose(pa_mpjpe(unmirror(pred, flags), unmirror(gt, flags)), pa_mpjpe(pred, gt), rtol=1e-9)

    def handedness(j):   # sign of the triple product of three bones from the wrist: flips under a mirror
        a, b, c = j[:, 5] - j[:, 0], j[:, 17] - j[:, 0], j[:, 4] - j[:, 0]
        return np.sign(np.einsum("bi,bi->b", np.cross(a, b), c))
    np.testing.assert_array_equal(handedness(unmirror(gt, flags)), -handedness(gt))
    partial = unmirror(gt, [True, False, True, False, False, False])
    np.testing.assert_array_equal(partial[1], gt[1])
    np.testing.assert_array_equal(partial[0, :, 0], -gt[0, :, 0])


def test_bad_inputs_raise():
    volume = HeatmapVolume()
    vox = np.full((2, 21, 3), 32.0)
    k = np.array([[500.0, 500, 128, 128]] * 2)
    with pytest.raises(ValueError, match="root depth"):
        reconstruct(vox, resize_affine(256, 256), k, [500.0, -1.0], volume)
    with pytest.raises(ValueError, match="one value per sample"):
        reconstruct(vox, resize_affine(256, 256), k, [500.0], volume)
    with pytest.raises(ValueError, match="fx, fy must be positive"):
        backproject(vox[..., :2], vox[..., 2], np.array([[0.0, 500, 128, 128]] * 2))
    with pytest.raises(ValueError, match="not a pose dataset"):
        HeatmapVolume.for_joint_order("none")

"""trainer.metrics against closed-form cases computed independently in the test."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trainer import metrics
from trainer.metrics import BODY14_JOINTS, PROTOCOLS, auc, epe, evaluate, mpjpe, pa_mpjpe, pck, procrustes_align


def skeletons(batch, joints, seed=0, spread=100.0):
    """Random non-planar point sets with joint 0 at the origin (so it is its own root)."""
    rng = np.random.default_rng(seed)
    j = rng.normal(scale=spread, size=(batch, joints, 3))
    return j - j[:, :1]


def rot_z(theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_similarity_transform_gives_zero_pa_and_the_closed_form_mpjpe():
    gt = skeletons(3, 17)
    theta, s, t = 0.7, 1.3, np.array([250.0, -40.0, 3000.0])
    pred = s * gt @ rot_z(theta).T + t
    # |s R g - g|^2 = s^2 |g|^2 + |g|^2 - 2 s g.Rg, with g.Rg = cos(theta)(x^2 + y^2) + z^2
    x, y, z = gt[..., 0], gt[..., 1], gt[..., 2]
    g2 = x ** 2 + y ** 2 + z ** 2
    g_rg = math.cos(theta) * (x ** 2 + y ** 2) + z ** 2
    expected = np.sqrt(s * s * g2 + g2 - 2 * s * g_rg).mean(axis=1)
    np.testing.assert_allclose(mpjpe(pred, gt), expected, rtol=1e-12)
    np.testing.assert_allclose(epe(pred, gt), expected, rtol=1e-12)
    assert pa_mpjpe(pred, gt).max() < 1e-9
    assert expected.min() > 50   # the case is not trivially small


def test_pure_rotation_error_is_the_chord_length():
    gt = skeletons(2, 21, seed=1)
    theta = math.radians(30)
    pred = gt @ rot_z(theta).T
    chord = 2 * math.sin(theta / 2) * np.hypot(gt[..., 0], gt[..., 1])
    np.testing.assert_allclose(mpjpe(pred, gt), chord.mean(axis=1), rtol=1e-12)
    assert pa_mpjpe(pred, gt).max() < 1e-9


def test_translation_is_removed_by_root_alignment_but_not_without():
    gt = skeletons(2, 21, seed=2)
    pred = gt + np.array([3.0, 4.0, 12.0])     # |t| = 13
    np.testing.assert_allclose(epe(pred, gt), 0, atol=1e-12)
    np.testing.assert_allclose(epe(pred, gt, root=None), 13.0, rtol=1e-12)


def test_reflection_is_not_aligned_away():
    gt = skeletons(4, 17, seed=3)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    pa = pa_mpjpe(mirrored, gt)
    spread = np.linalg.norm(gt - gt.mean(axis=1, keepdims=True), axis=-1).mean(axis=1)
    assert np.all(pa > 0.2 * spread), (pa, spread)
    # A reflection-allowing fit (orthogonal Procrustes without the det fix) would give zero:
    x = mirrored - mirrored.mean(1, keepdims=True)
    y = gt - gt.mean(1, keepdims=True)
    u, _, vt = np.linalg.svd(np.einsum("bki,bkj->bij", y, x))
    assert np.abs(np.einsum("bij,bkj->bki", u @ vt, x) - y).max() < 1e-9


def test_procrustes_matches_an_independent_rotation_fit_and_is_optimal():
    rng = np.random.default_rng(4)
    gt = skeletons(5, 17, seed=4)
    pred = gt * np.array([-1.0, 1.0, 1.0]) + rng.normal(scale=20.0, size=gt.shape)
    ours = procrustes_align(pred, gt)
    for b in range(len(gt)):
        x = pred[b] - pred[b].mean(0)
        y = gt[b] - gt[b].mean(0)
        rot, _ = Rotation.align_vectors(y, x)          # proper rotation minimising sum |y - R x|^2
        rx = rot.apply(x)
        s = (y * rx).sum() / (x * x).sum()
        reference = s * rx + gt[b].mean(0)
        np.testing.assert_allclose(ours[b], reference, atol=1e-8)
        assert np.linalg.det(rot.as_matrix()) > 0
        # no random rotation or rescaling of the fit does better (sum of squares)
        best = ((ours[b] - gt[b]) ** 2).sum()
        for r in Rotation.random(200, random_state=b).as_matrix():
            trial = s * 1.05 * x @ r.T @ rot.as_matrix().T + gt[b].mean(0)
            assert ((trial - gt[b]) ** 2).sum() >= best


def test_degenerate_inputs_stay_finite():
    gt = skeletons(2, 17, seed=5) + 1000.0
    collapsed = np.repeat(gt[:, 3:4], 17, axis=1)            # every predicted joint at one point
    pa = pa_mpjpe(collapsed, gt)
    to_centroid = np.linalg.norm(gt - gt.mean(1, keepdims=True), axis=-1).mean(1)
    np.testing.assert_allclose(pa, to_centroid, rtol=1e-12)  # s = 0: all joints land on the centroid
    zeros = np.zeros((3, 21, 3))
    for value in (pa_mpjpe(zeros, zeros), epe(zeros, zeros), mpjpe(zeros, zeros),
                  evaluate(zeros, zeros, protocol="hand").per_sample["pa_epe"],
                  evaluate(zeros, zeros, np.ones((3, 21), bool), protocol="hand3d").per_sample["epe"]):
        assert np.all(np.isfinite(value)) and np.all(value == 0)
    # ground truth collapsed too: still finite
    assert np.all(np.isfinite(pa_mpjpe(gt, np.repeat(gt[:, :1], 17, axis=1))))


def test_bad_input_raises_clear_errors():
    gt = skeletons(2, 21)
    bad = gt.copy()
    bad[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"pred has NaN or inf in samples \[1\]"):
        epe(bad, gt)
    with pytest.raises(ValueError, match="must both be"):
        mpjpe(gt[:, :17], gt)
    with pytest.raises(ValueError, match=r"samples \[0\] have no visible joint"):
        epe(gt, gt, visible=np.array([[False] * 21, [True] * 21]))
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(gt, gt, protocol="nope")


def test_epe_with_visibility():
    gt = skeletons(1, 4, seed=6)
    pred = gt.copy()
    pred[0, 1] += [0, 0, 10.0]
    pred[0, 2] += [0, 30.0, 0]
    visible = np.array([[True, True, False, True]])
    np.testing.assert_allclose(epe(pred, gt, visible=visible), [10.0 / 3])
    np.testing.assert_allclose(epe(pred, gt), [40.0 / 4])


def test_pck_and_auc_on_hand_computed_examples():
    errors = np.array([[10.0, 20.0, 30.0, 40.0]])
    np.testing.assert_allclose(pck(errors, [15, 25, 35]), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(pck(errors, [20]), [0.5])                 # threshold inclusive
    two = np.array([[10.0, 30.0], [20.0, 40.0]])
    vis = np.array([[True, True], [False, True]])
    np.testing.assert_allclose(pck(two, [35], vis, "pooled"), [2 / 3])   # 10, 30 of 10, 30, 40
    np.testing.assert_allclose(pck(two, [35], vis, "joint"), [0.75])     # joint0 1/1, joint1 1/2
    assert auc([0, 10, 20], [0, 1, 1]) == pytest.approx(0.75)            # (5 + 10) / 20
    assert auc([0, 10, 20], [0, 1, 1], method="mean") == pytest.approx(2 / 3)
    assert auc([20, 50], [0.2, 0.8]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pck(two, [10], np.zeros((2, 2), bool))


def test_hand3d_rescales_by_the_middle_finger_bone():
    gt = skeletons(2, 21, seed=7) * 0.5 + np.array([0, 0, 600.0])
    palm = 0.5 * (gt[:, 0] + gt[:, 9])
    # any scale and translation of the whole hand is undone by the bone normalisation
    pred = (gt - palm[:, None]) * 2.7 + np.array([10.0, -5.0, 40.0])
    vis = np.ones((2, 21), bool)
    result = evaluate(pred, gt, vis, "hand3d")
    assert result.summary["epe"] == pytest.approx(0, abs=1e-9)
    assert result.summary["auc_20_50"] == pytest.approx(1.0)
    # without it (default protocol) the error is the scale error: 1.7 x the wrist-relative norm
    plain = evaluate(pred, gt, None, "hand").per_sample["epe"]
    np.testing.assert_allclose(plain, 1.7 * np.linalg.norm(gt - gt[:, :1], axis=-1).mean(1), rtol=1e-12)


def test_hand3d_palm_root_and_visible_joints():
    gt = skeletons(1, 21, seed=8)
    d = np.array([0.0, 8.0, 6.0])                      # |d| = 10
    pred = gt.copy()
    pred[0, 0] += d                                    # only the wrist is wrong
    # palm root moves by d/2, so the 20 finger joints are off by 5 mm and the palm (joint 0) by 0
    vis = np.ones((1, 21), bool)
    np.testing.assert_allclose(evaluate(pred, gt, vis, "hand3d").per_sample["epe"], [20 * 5.0 / 21])
    vis[0, 15:] = False                                # 6 fingertip-side joints hidden
    np.testing.assert_allclose(evaluate(pred, gt, vis, "hand3d").per_sample["epe"], [14 * 5.0 / 15])
    vis[0, 0] = False                                  # the palm stays visible through the middle MCP
    np.testing.assert_allclose(evaluate(pred, gt, vis, "hand3d").per_sample["epe"], [14 * 5.0 / 15])
    # the default protocol roots at the wrist: every other joint is off by |d| = 10
    np.testing.assert_allclose(evaluate(pred, gt, None, "hand").per_sample["epe"], [20 * 10.0 / 21])


def test_hand3d_summary_averages_per_joint():
    gt = np.zeros((2, 21, 3))
    gt[:, :, 0] = np.arange(21) * 10.0
    gt[:, :, 1] = np.arange(21) ** 1.5                 # non-degenerate middle bone 9->10
    pred = gt.copy()
    pred[0, 20] += [0, 0, 12.0]
    pred[1, 20] += [0, 0, 4.0]
    pred[1, 19] += [0, 0, 9.0]
    vis = np.ones((2, 21), bool)
    vis[1, 20] = False
    r = evaluate(pred, gt, vis, "hand3d")
    # per joint: joint 20 -> 12 (one visible sample), joint 19 -> (0 + 9) / 2, others 0
    assert r.summary["epe"] == pytest.approx((12 + 4.5) / 21)
    np.testing.assert_allclose(r.per_sample["epe"], [12 / 21, 9 / 20])


def test_body_protocols():
    gt = skeletons(2, 17, seed=9) * 3 + np.array([0, 0, 4000.0])
    pred = gt.copy()
    body14 = list(BODY14_JOINTS)
    offsets = np.zeros((17, 3))
    offsets[body14[:7], 0] = 100.0
    offsets[body14[7:], 1] = 200.0
    offsets[[7, 9], 2] = 1000.0                        # spine, neck: not among the 14
    pred += offsets
    r = evaluate(pred, gt, None, "3dhp")
    np.testing.assert_allclose(r.per_sample["mpjpe"], 150.0)
    assert r.summary["pck@150"] == pytest.approx(0.5)
    # PCK is 0 below 100 mm and 0.5 from 100 to 150: 11 of 31 thresholds at 0.5
    assert r.summary["auc_0_150"] == pytest.approx(5.5 / 31)
    r17 = evaluate(pred, gt, None, "h36m17")
    np.testing.assert_allclose(r17.per_sample["mpjpe"], (7 * 100 + 7 * 200 + 2 * 1000) / 17)
    # the 14-joint protocol aligns at the hip centre; a rigid shift of everything is invisible to it
    shifted = evaluate(gt + np.array([50.0, 0, 0]), gt, None, "h36m14")
    np.testing.assert_allclose(shifted.per_sample["mpjpe"], 0, atol=1e-9)
    assert PROTOCOLS["h36m14"].root == (1, 4)


def test_evaluate_summary_and_records():
    gt = skeletons(3, 21, seed=10)
    pred = gt.copy()
    pred[:, 1:] += np.array([0, 0, 24.5])              # every non-root joint 24.5 mm deeper
    r = evaluate(pred, gt, None, "hand")
    np.testing.assert_allclose(r.per_sample["epe"], 20 * 24.5 / 21)
    assert r.summary["epe"] == pytest.approx(20 * 24.5 / 21)
    assert r.summary["num_samples"] == 3
    # PCK over 20..50 (1 mm steps): only the root (1/21) within 20-24 mm, every joint from 25 mm
    thresholds, curve = r.pck_curve
    assert thresholds[0] == 20 and thresholds[-1] == 50 and len(thresholds) == 31
    np.testing.assert_allclose(curve[:5], 1 / 21)
    np.testing.assert_allclose(curve[5:], 1.0)
    assert r.summary["pck@20"] == pytest.approx(1 / 21)
    assert metrics.PROTOCOLS["hand"].to_dict()["root"] == 0

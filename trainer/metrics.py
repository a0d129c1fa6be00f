"""3D pose metrics in millimetres: plain numpy over (B, K, 3) arrays, one value per sample.

    epe(pred, gt, root=0, visible=None)      hands: mean joint error after aligning the roots
    mpjpe(pred, gt, root=0, joints=None)     bodies: the same with a joint subset (pelvis root)
    pa_mpjpe(pred, gt, joints=None)          after a per-sample similarity Procrustes alignment
    pck(errors, thresholds, ...)             fraction of joints within each threshold
    auc(thresholds, pck_values, ...)         normalised area under a PCK curve

The published protocols (which root, which joints, scale normalisation, visibility, PCK range)
are `Protocol` values in `PROTOCOLS`; `evaluate(pred, gt, visible, protocol)` applies one and
returns per-sample values plus the summary a results table needs.

A `root` argument is a joint index, a tuple of indices whose mean is the root (the palm centre
(0, 9), the hip centre (1, 4)), or None for no alignment.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Bone lengths (mm) and point spreads (mm^2) below this count as zero: degenerate skeletons.
_EPS = 1e-9


# -- inputs ---------------------------------------------------------------------------------
def _check_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must both be (B, K, 3); got {pred.shape} and {gt.shape}")
    for name, a in (("pred", pred), ("gt", gt)):
        bad = ~np.isfinite(a).all(axis=(1, 2))
        if bad.any():
            raise ValueError(f"{name} has NaN or inf in samples {np.flatnonzero(bad)[:10].tolist()}")
    return pred, gt


def _check_visible(visible, shape) -> np.ndarray | None:
    if visible is None:
        return None
    visible = np.asarray(visible, bool)
    if visible.shape != shape:
        raise ValueError(f"visible must be (B, K) = {shape}, got {visible.shape}")
    empty = ~visible.any(axis=1)
    if empty.any():
        raise ValueError(f"samples {np.flatnonzero(empty)[:10].tolist()} have no visible joint: "
                         "their error is undefined (drop them before evaluating)")
    return visible


def root_position(joints: np.ndarray, root) -> np.ndarray:
    """(B, K, 3) -> (B, 1, 3): one joint, or the mean of several (palm, hip centre)."""
    index = (root,) if np.isscalar(root) else tuple(root)
    return joints[:, list(index)].mean(axis=1, keepdims=True)


def root_relative(joints: np.ndarray, root) -> np.ndarray:
    """Subtract the root from every joint; root=None returns the joints unchanged."""
    joints = np.asarray(joints, np.float64)
    return joints if root is None else joints - root_position(joints, root)


def joint_errors(pred, gt) -> np.ndarray:
    """(B, K) Euclidean distance per joint, no alignment."""
    pred, gt = _check_pair(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1)


def _mean_over(errors: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
    if visible is None:
        return errors.mean(axis=1)
    return (errors * visible).sum(axis=1) / visible.sum(axis=1)


# -- per-sample errors ----------------------------------------------------------------------
def epe(pred, gt, root=0, visible=None) -> np.ndarray:
    """End-point error per sample (mm): mean distance over the (visible) joints after moving
    both skeletons' roots to the origin. root=0 is the wrist in hand21."""
    pred, gt = _check_pair(pred, gt)
    visible = _check_visible(visible, pred.shape[:2])
    errors = np.linalg.norm(root_relative(pred, root) - root_relative(gt, root), axis=-1)
    return _mean_over(errors, visible)


def mpjpe(pred, gt, root=0, joints=None) -> np.ndarray:
    """Mean per-joint position error per sample (mm) after aligning the roots (root=0 is the
    h36m17 pelvis). `joints` restricts the mean to a subset (e.g. BODY14_JOINTS); the root is
    taken from the full skeleton first, so it need not be in the subset."""
    pred, gt = _check_pair(pred, gt)
    errors = np.linalg.norm(root_relative(pred, root) - root_relative(gt, root), axis=-1)
    if joints is not None:
        errors = errors[:, list(joints)]
    return errors.mean(axis=1)


def procrustes_align(pred, gt) -> np.ndarray:
    """Per sample, the similarity transform s * R @ x + t (s >= 0, R a rotation with det +1,
    never a reflection) that minimises sum_k |s R pred_k + t - gt_k|^2, applied to `pred`
    (Umeyama 1991). Degenerate samples stay finite: a prediction collapsed to one point gets
    s = 0 (every joint lands on the ground truth's centroid)."""
    pred, gt = _check_pair(pred, gt)
    mu_pred, mu_gt = pred.mean(axis=1, keepdims=True), gt.mean(axis=1, keepdims=True)
    x, y = pred - mu_pred, gt - mu_gt
    var_pred = (x ** 2).sum(axis=(1, 2))                      # sum over joints, not mean: s below
    cov = np.einsum("bki,bkj->bij", y, x)                       # sum_k y_k x_k^T, (B, 3, 3)
    u, sing, vt = np.linalg.svd(cov)
    # Flip the weakest axis when the best orthogonal matrix would be a reflection.
    d = np.ones_like(sing)
    d[:, -1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    d[d == 0] = 1.0                                             # rank-deficient: either sign is optimal
    rotation = u @ (d[:, :, None] * vt)
    scale = np.where(var_pred > _EPS, (sing * d).sum(axis=1) / np.maximum(var_pred, _EPS), 0.0)
    return scale[:, None, None] * np.einsum("bij,bkj->bki", rotation, x) + mu_gt


def pa_mpjpe(pred, gt, joints=None) -> np.ndarray:
    """Procrustes-aligned MPJPE per sample (mm): align each prediction to its ground truth with
    `procrustes_align` (on the `joints` subset when given, as SPIN-style evaluations do), then
    the mean joint distance. No root alignment is needed: the translation absorbs it."""
    pred, gt = _check_pair(pred, gt)
    if joints is not None:
        pred, gt = pred[:, list(joints)], gt[:, list(joints)]
    return np.linalg.norm(procrustes_align(pred, gt) - gt, axis=-1).mean(axis=1)


def scale_to_reference_bone(pred_rel, gt_rel, bone=(9, 10)) -> np.ndarray:
    """Rescale each root-relative prediction so that its `bone` has the ground truth's length
    (hand3d: the middle finger's MCP->PIP, hand21 9->10). The network's absolute scale is then
    irrelevant; a prediction whose bone has zero length is left unscaled rather than blown up."""
    pred_rel, gt_rel = np.asarray(pred_rel, np.float64), np.asarray(gt_rel, np.float64)
    a, b = bone
    pred_len = np.linalg.norm(pred_rel[:, a] - pred_rel[:, b], axis=-1)
    gt_len = np.linalg.norm(gt_rel[:, a] - gt_rel[:, b], axis=-1)
    factor = np.where(pred_len > _EPS, gt_len / np.maximum(pred_len, _EPS), 1.0)
    return pred_rel * factor[:, None, None]


# -- PCK and AUC ----------------------------------------------------------------------------
def pck(errors_per_joint, thresholds, visible=None, average: str = "pooled") -> np.ndarray:
    """3D PCK: for each threshold (mm), the fraction of joints with error <= threshold.

    errors_per_joint: (B, K) distances. average="pooled" counts every (visible) joint of every
    sample once (MPI-INF-3DHP's script); average="joint" takes the fraction per joint over the
    samples where it is visible, then the mean over joints (hand3d's EvalUtil; joints never
    visible are left out). Both agree when every joint is visible. Returns (T,)."""
    errors = np.asarray(errors_per_joint, np.float64)
    if errors.ndim != 2:
        raise ValueError(f"errors_per_joint must be (B, K), got {errors.shape}")
    thresholds = np.atleast_1d(np.asarray(thresholds, np.float64))
    mask = np.ones(errors.shape, bool) if visible is None else np.asarray(visible, bool)
    if mask.shape != errors.shape:
        raise ValueError(f"visible must match errors {errors.shape}, got {mask.shape}")
    if not mask.any():
        raise ValueError("no visible joint: PCK is undefined")
    within = (errors[None] <= thresholds[:, None, None]) & mask[None]      # (T, B, K)
    if average == "pooled":
        return within.sum(axis=(1, 2)) / mask.sum()
    if average == "joint":
        counts = mask.sum(axis=0)                                           # (K,)
        seen = counts > 0
        return (within.sum(axis=1)[:, seen] / counts[seen]).mean(axis=1)
    raise ValueError(f"average must be 'pooled' or 'joint', got {average!r}")


def auc(thresholds, pck_values, method: str = "trapezoid") -> float:
    """Area under a PCK curve, normalised to [0, 1].

    method="trapezoid": trapezoidal integral over the threshold range divided by its width
    (hand3d's calc_auc, the hand literature's "AUC 20-50 mm"). method="mean": the plain mean of
    the PCK values at the (evenly spaced) thresholds (MPI-INF-3DHP's AUC over 0:5:150 mm)."""
    t = np.asarray(thresholds, np.float64)
    p = np.asarray(pck_values, np.float64)
    if t.shape != p.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError(f"thresholds and pck_values must be equal-length 1-D (>= 2), got {t.shape}, {p.shape}")
    if method == "mean":
        return float(p.mean())
    if method == "trapezoid":
        if t[-1] <= t[0]:
            raise ValueError("thresholds must increase")
        return float(((p[1:] + p[:-1]) / 2 * np.diff(t)).sum() / (t[-1] - t[0]))
    raise ValueError(f"method must be 'trapezoid' or 'mean', got {method!r}")


# -- protocols ------------------------------------------------------------------------------
# The 14 body joints that Human3.6M 14-joint evaluations (SPIN/HMR's LSP-style set) and the
# MPI-INF-3DHP test script use: h36m17 without pelvis (0), spine (7) and neck/nose (9), i.e.
# hips, knees, ankles, shoulders, elbows, wrists, thorax (8, "neck" in LSP/3DHP) and head (10).
BODY14_JOINTS = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
PALM = (0, 9)           # hand21 palm centre = 0.5 * (wrist + middle MCP), RHD/hand3d
HIP_CENTRE = (1, 4)     # h36m17 0.5 * (r_hip + l_hip), the 14-joint root (the pelvis is not in it)


@dataclass(frozen=True)
class Protocol:
    """How one benchmark computes its numbers. Recorded in results.json as a dict.

    metric: "epe" (hands) or "mpjpe" (bodies), the name of the headline per-sample value.
    root: joint index or tuple (mean) that both skeletons are aligned at.
    joints: evaluated subset (None = all).
    palm_replaces_wrist: hand3d's RHD evaluation replaces joint 0 by the palm centre in both
        skeletons (visible if wrist or middle MCP is) and then aligns at it.
    scale_bone: rescale each prediction so this bone has the ground-truth length.
    visible_only: only joints flagged visible count.
    joint_average: summary mean and PCK average per joint first (hand3d's EvalUtil).
    pck_thresholds: the PCK curve (mm); its AUC uses auc_method.
    pck_at: single-threshold PCK values reported separately (mm).
    procrustes: also report the Procrustes-aligned error (FreiHAND's official metric, PA-MPJPE).
    """
    name: str
    joint_order: str
    metric: str
    root: int | tuple | None = 0
    joints: tuple | None = None
    palm_replaces_wrist: bool = False
    scale_bone: tuple | None = None
    visible_only: bool = False
    joint_average: bool = False
    pck_thresholds: tuple = tuple(float(t) for t in np.linspace(20, 50, 31))
    auc_method: str = "trapezoid"
    pck_at: tuple = ()
    procrustes: bool = True
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_AUC_3DHP = tuple(float(t) for t in np.arange(0, 151, 5))   # 0:5:150 mm, 31 thresholds

PROTOCOLS = {
    # Hands, default: root-relative at the wrist, all 21 joints (3D labels exist for occluded
    # joints too), PCK/AUC over 20-50 mm, plus Procrustes-aligned EPE.
    "hand": Protocol("hand", "hand21", "epe", root=0, pck_at=(20.0, 30.0, 50.0),
                     notes="root-relative at the wrist, 21 joints"),
    # hand3d (Zimmermann & Brox 2017, RHD/STB): palm root, prediction rescaled by the GT middle
    # MCP->PIP length, visible joints only, per-joint averaging, AUC 20-50 mm.
    "hand3d": Protocol("hand3d", "hand21", "epe", root=0, palm_replaces_wrist=True, scale_bone=(9, 10),
                       visible_only=True, joint_average=True, pck_at=(20.0, 30.0, 50.0), procrustes=False,
                       notes="palm root (0.5*(wrist+middle MCP) replaces joint 0), prediction scaled by GT "
                             "middle MCP->PIP length, visible joints only, per-joint averages (hand3d EvalUtil)"),
    # Bodies, default: pelvis-aligned MPJPE and PA-MPJPE over the 17 Human3.6M joints.
    "h36m17": Protocol("h36m17", "h36m17", "mpjpe", root=0, pck_thresholds=_AUC_3DHP, auc_method="mean",
                       pck_at=(150.0,), notes="pelvis-aligned, 17 joints"),
    # 14 joints (BODY14_JOINTS), aligned at the hip centre since the pelvis is not among them.
    "h36m14": Protocol("h36m14", "h36m17", "mpjpe", root=HIP_CENTRE, joints=BODY14_JOINTS,
                       pck_thresholds=_AUC_3DHP, auc_method="mean", pck_at=(150.0,),
                       notes="14 joints (no pelvis, spine, neck/nose), hip-centre aligned (SPIN/HMR)"),
    # MPI-INF-3DHP test protocol: pelvis-aligned, its 14 evaluated joints, PCK@150 mm and AUC as
    # the mean PCK over 0:5:150 mm (mpii_compute_3d_pck.m).
    "3dhp": Protocol("3dhp", "h36m17", "mpjpe", root=0, joints=BODY14_JOINTS, pck_thresholds=_AUC_3DHP,
                     auc_method="mean", pck_at=(150.0,),
                     notes="pelvis-aligned, the 14 joints of the 3DHP test script, PCK@150 and AUC 0:5:150"),
}


@dataclass
class ProtocolResult:
    """Per-sample values (each (B,)), per-joint errors and their mask (B, K'), and the summary."""
    protocol: Protocol
    per_sample: dict
    joint_errors: np.ndarray
    joint_mask: np.ndarray
    summary: dict = field(default_factory=dict)
    pck_curve: tuple = ((), ())     # (thresholds, values)


def apply_palm_root(joints: np.ndarray, visible: np.ndarray | None):
    """hand3d: replace hand21 joint 0 (wrist) by the palm centre; it is visible when either the
    wrist or the middle MCP is (hand3d's BinaryDbReader)."""
    joints = np.array(joints, np.float64)
    joints[:, 0] = joints[:, list(PALM)].mean(axis=1)
    if visible is not None:
        visible = np.array(visible, bool)
        visible[:, 0] = visible[:, 0] | visible[:, 9]
    return joints, visible


def evaluate(pred, gt, visible=None, protocol: Protocol | str = "hand") -> ProtocolResult:
    """Apply one protocol to a batch (or a whole test set) of predictions in millimetres."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    pred, gt = _check_pair(pred, gt)
    if visible is not None:
        visible = np.asarray(visible, bool)
        if visible.shape != pred.shape[:2]:
            raise ValueError(f"visible must be {pred.shape[:2]}, got {visible.shape}")
    if protocol.palm_replaces_wrist:
        pred, _ = apply_palm_root(pred, None)
        gt, visible = apply_palm_root(gt, visible)
    pred_rel, gt_rel = root_relative(pred, protocol.root), root_relative(gt, protocol.root)
    if protocol.scale_bone is not None:
        pred_rel = scale_to_reference_bone(pred_rel, gt_rel, protocol.scale_bone)
    mask = visible if (protocol.visible_only and visible is not None) else np.ones(pred.shape[:2], bool)
    if protocol.joints is not None:
        index = list(protocol.joints)
        pred_rel, gt_rel, mask = pred_rel[:, index], gt_rel[:, index], mask[:, index]
    mask = _check_visible(mask, mask.shape)
    errors = np.linalg.norm(pred_rel - gt_rel, axis=-1)

    name = protocol.metric
    per_sample = {name: _mean_over(errors, mask)}
    if protocol.procrustes:
        per_sample["pa_" + name] = pa_mpjpe(pred_rel, gt_rel)
    average = "joint" if protocol.joint_average else "pooled"
    if protocol.joint_average:
        counts = mask.sum(axis=0)
        seen = counts > 0
        headline = float(((errors * mask).sum(axis=0)[seen] / counts[seen]).mean())
        headline_median = float(np.mean([np.median(errors[mask[:, j], j]) for j in np.flatnonzero(seen)]))
    else:   # the mean of the per-sample values, so the summary and per_sample always agree
        headline = float(per_sample[name].mean())
        headline_median = float(np.median(per_sample[name]))
    summary = {name: headline, name + "_median": headline_median, "num_samples": int(len(errors))}
    if protocol.procrustes:
        summary["pa_" + name] = float(per_sample["pa_" + name].mean())
    thresholds = np.asarray(protocol.pck_thresholds, np.float64)
    curve = pck(errors, thresholds, mask, average)
    lo, hi = thresholds[0], thresholds[-1]
    summary[f"auc_{lo:g}_{hi:g}"] = auc(thresholds, curve, protocol.auc_method)
    for t in protocol.pck_at:
        summary[f"pck@{t:g}"] = float(pck(errors, [t], mask, average)[0])
    return ProtocolResult(protocol, per_sample, errors, mask, summary,
                          (thresholds.tolist(), curve.tolist()))

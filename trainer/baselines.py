"""Trivial baselines that every evaluation table is read against.

A pose model has learned something only if it beats predicting one constant pose for every
image. The constant here is the mean root-relative 3D pose of the fine-tuning source's training
split: what a model that ignores its input converges to under a squared loss. `trainer finetune`
records it in its config and checkpoints (options["mean_pose"]); `trainer evaluate` scores it on
every shard set as its own table row, next to the models.

The mean is taken in the shards' stored frame (camera coordinates of the crop, mirrored left
hands stored as right hands) relative to joint 0 of the joint order (the wrist for hand21, the
pelvis for h36m17). Placed at each test sample's ground-truth joint 0 and un-mirrored like a
model's prediction, every protocol then aligns it as it aligns the models' outputs.

Public API
    MeanPose(joints_mm (K,3), joint_order, samples, source)   .to_dict() / MeanPose.from_dict(d)
    mean_pose(shards, skip_bad=False) -> MeanPose   reads only the joints3d members (by .idx offset)
    constant_prediction(mean, joints3d_stored_mm (S,K,3)) -> (S,K,3) in the stored frame
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.order import Catalog
from shards.ordered_source import read_member
from shards.reader import read_manifest
from shards.schema import EXT_JOINTS3D, EXT_META, JOINT_ORDERS, SampleError


@dataclass
class MeanPose:
    joints_mm: np.ndarray     # (K, 3) root-relative (joint 0), stored frame
    joint_order: str
    samples: int              # how many samples with 3D joints went into the mean
    source: str               # the shard directory it was computed from

    def to_dict(self) -> dict:
        return {"joints_mm": np.round(self.joints_mm, 3).tolist(), "joint_order": self.joint_order,
                "samples": self.samples, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "MeanPose":
        return cls(np.asarray(d["joints_mm"], np.float64), d["joint_order"], int(d["samples"]), str(d["source"]))


def mean_pose(shards, skip_bad: bool = False) -> MeanPose:
    """The mean root-relative pose of every sample with 3D joints in a shard directory. Reads the
    joints3d members only, at the offsets the .idx files give (never the images). A member cut
    off by a truncated shard is one SampleError naming the shard and the sample, or with
    `skip_bad` (the trainers' --skip-bad-samples) left out of the mean."""
    path = Path(shards)
    catalog = Catalog.of(path, [EXT_JOINTS3D, EXT_META])
    joint_order = read_manifest(path).get("joint_order")
    found: list[tuple[str, str, np.ndarray]] = []         # (shard, key, flat joints)
    files: dict = {}
    try:
        for row in np.flatnonzero(catalog.sizes[:, 0] >= 0):
            shard, key = catalog.shards[catalog.shard_of[row]], str(catalog.keys[row])
            try:
                joints = read_member(catalog, files, int(row), 0).view(np.float32)
                if joint_order is None and catalog.sizes[row, 1] >= 0:
                    joint_order = json.loads(read_member(catalog, files, int(row), 1).tobytes()).get("joint_order")
            except SampleError:
                if not skip_bad:
                    raise
                continue
            found.append((shard, key, joints))
    finally:
        for fd in files.values():
            os.close(fd)
    if not found:
        raise SampleError(f"no sample with {EXT_JOINTS3D}: no 3D mean pose to compare with", file=str(path))
    if joint_order not in JOINT_ORDERS:
        raise SampleError(f"joint order {joint_order!r} is not one of {sorted(JOINT_ORDERS)}", file=str(path))
    k = len(JOINT_ORDERS[joint_order])
    total = np.zeros((k, 3))
    for shard, key, joints in found:
        if joints.size != 3 * k or not np.all(np.isfinite(joints)):
            raise SampleError(f"{EXT_JOINTS3D} is not {k} finite {joint_order} joints", file=shard, sample=key)
        joints = joints.reshape(k, 3).astype(np.float64)
        total += joints - joints[0]
    # resolved: one source named two ways (relative, absolute) is one baseline row
    return MeanPose(total / len(found), joint_order, len(found), str(path.resolve()))


def constant_prediction(mean: MeanPose, joints3d_stored_mm: np.ndarray) -> np.ndarray:
    """The mean pose placed at each sample's ground-truth joint 0, in the stored frame (S, K, 3)."""
    gt = np.asarray(joints3d_stored_mm, np.float64)
    if gt.shape[1:] != mean.joints_mm.shape:
        raise ValueError(f"ground truth of shape {gt.shape[1:]} per sample, mean pose {mean.joints_mm.shape}")
    return gt[:, :1] + mean.joints_mm[None]


def meta_mean_pose(options: dict) -> MeanPose | None:
    """The mean pose a fine-tuning run recorded, or None for runs from before it was recorded."""
    recorded = (options or {}).get("mean_pose")
    return MeanPose.from_dict(recorded) if recorded else None


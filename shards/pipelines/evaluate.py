"""Evaluation input: no augmentation, storage order, every sample exactly once across ranks.

Rank r reads samples [N*r/n, N*(r+1)/n) and DALI pads every rank to the same number of batches
by repeating its last sample; `valid` marks the padding so metrics can drop it.
"""
from __future__ import annotations

from .finetune import pose_stream
from .loader import Loader, rank_share
from .pose import EVALUATION_OUTPUTS, evaluation_pipeline
from .shardset import ShardSet


def eval_loader(shards, *, batch_size: int, input_size: int = 256, rank: int = 0, world_size: int = 1,
                num_threads: int = 2) -> Loader:
    """Evaluation batches: image (B,3,S,S) normalised, joints3d_mm (B,K,3), joints2d_px (B,K,2)
    in stored-crop pixels, visible (B,K) float, intrinsics (B,4) fx fy cx cy of the stored crop,
    crop_to_input (B,2,3) affine from stored-crop to input pixels, has_3d (B,) bool, key, and
    valid (B,) bool: False on padding, which repeats a real sample and must not be counted."""
    data = ShardSet.at(shards)
    n = data.count()
    if n < world_size:
        raise ValueError(f"{n} samples cannot be split over {world_size} ranks")
    largest = -(-n // world_size)
    num_joints, _ = data.num_joints()
    stream = pose_stream(evaluation_pipeline, data, name="eval", names=EVALUATION_OUTPUTS, batch_size=batch_size,
                         seed=0, rank=rank, num_threads=num_threads, world_size=world_size, input_size=input_size,
                         num_joints=num_joints)
    fingerprint = dict(kind="eval", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       input_size=input_size)
    return Loader([stream], -(-largest // batch_size), fingerprint=fingerprint,
                  valid_per_epoch=rank_share(n, rank, world_size))

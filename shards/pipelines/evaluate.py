"""Evaluation input: no augmentation, storage order, every sample exactly once across ranks.

Rank r reads samples [N*r/n, N*(r+1)/n) and DALI pads every rank to the same number of batches
by repeating its last sample; `valid` marks the padding so metrics can drop it.
"""
from __future__ import annotations

from .common import Loader, ShardSet, rank_share
from .finetune import pose_stream

EVAL_NAMES = ("image", "joints3d_mm", "joints2d_px", "visible", "intrinsics", "crop_to_input", "has_3d", "key")


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
    stream = pose_stream(data, name="eval", names=EVAL_NAMES, batch_size=batch_size, input_size=input_size,
                         augment=None, labels=True, evaluation=True, seed=0, rank=rank, world_size=world_size,
                         num_threads=num_threads)
    fingerprint = dict(kind="eval", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       input_size=input_size)
    return Loader([stream], -(-largest // batch_size), fingerprint=fingerprint,
                  valid_per_epoch=rank_share(n, rank, world_size))

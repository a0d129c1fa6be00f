"""Evaluation input: no augmentation, storage order, every sample exactly once across ranks.

Rank r reads samples [N*r/n, N*(r+1)/n) (shards.order.eval_rows) and every rank gets the same
number of batches, the last padded by repeating a real sample; `valid` marks the padding so
metrics can drop it.
"""
from __future__ import annotations

from ..device import cuda_available
from ..order import Catalog, eval_rows
from ..ordered_source import EvalSource
from .loader import Loader, Stream, rank_share
from .pose import EVALUATION_OUTPUTS, LABEL_DTYPES, LABEL_EXTS, evaluation_pipeline
from .shardset import ShardSet
from .steps import pipeline_kwargs


def eval_loader(shards, *, batch_size: int, input_size: int = 256, rank: int = 0, world_size: int = 1,
                num_threads: int = 2) -> Loader:
    """Evaluation batches: image (B,3,S,S) normalised, joints3d_mm (B,K,3), joints2d_px (B,K,2)
    in stored-crop pixels, visible (B,K) float, intrinsics (B,4) fx fy cx cy of the stored crop,
    crop_to_input (B,2,3) affine from stored-crop to input pixels, has_3d (B,) bool, key, and
    valid (B,) bool: False on padding, which repeats a real sample and must not be counted."""
    data = ShardSet.at(shards)
    catalog = Catalog.of(list(data.paths), LABEL_EXTS)
    n = len(catalog)
    if n < world_size:
        raise ValueError(f"{n} samples cannot be split over {world_size} ranks")
    batches = [rows for rows, _ in eval_rows(n, world_size, rank, batch_size)]
    num_joints, _ = data.num_joints()

    def build(start):
        source = EvalSource(catalog, batches[start % len(batches):] + batches[:start % len(batches)], LABEL_DTYPES)
        return evaluation_pipeline(source, input_size=input_size, num_joints=num_joints, gpu=cuda_available(),
                                   **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=0, rank=rank,
                                                     salt="eval"))
    fingerprint = dict(kind="eval", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       input_size=input_size)
    return Loader([Stream(build, batch_size, EVALUATION_OUTPUTS, [data])], len(batches), fingerprint=fingerprint,
                  valid_per_epoch=rank_share(n, rank, world_size))

"""Stage 2 input (docs/method.md): labelled source crops for the 3D-heatmap loss and label-free target
crops for the attention regulariser (pose.py's training and target pipelines)."""
from __future__ import annotations

from ..device import cuda_available
from .augment import as_augment
from .loader import Loader, Stream, per_rank_min
from .pose import TARGET_OUTPUTS, TRAINING_OUTPUTS, target_pipeline, training_pipeline
from .shardset import ShardSet
from .steps import pipeline_kwargs


def pose_stream(pipeline, shards: ShardSet, *, name: str, names: tuple, batch_size: int, seed: int, rank: int,
                num_threads: int, **graph) -> Stream:
    """A Stream of one of the pose pipelines (pose.py) over `shards`; `graph`: its own arguments."""
    def build(checkpoint):
        return pipeline(shards, name=name, rank=rank, shuffle_seed=seed, gpu=cuda_available(), **graph,
                        **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=seed, rank=rank,
                                          salt=name, checkpoint=checkpoint))
    return Stream(build, batch_size, names, [shards])


def finetune_loader(source, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                    augment=True, num_threads: int = 2) -> Loader:
    """Labelled source batches: image (B,3,S,S) normalised, joints2d (B,K,2) in input pixels,
    depth_rel_mm (B,K) = z - z_root (root index from the samples' meta), visible (B,K) float,
    has_depth (B,) bool, key. One epoch = floor(samples / world_size / batch_size) batches."""
    src = ShardSet.at(source)
    n = src.count()
    num_joints, root_index = src.num_joints()
    stream = pose_stream(training_pipeline, src, name="finetune", names=TRAINING_OUTPUTS, batch_size=batch_size,
                         seed=seed, rank=rank, num_threads=num_threads, world_size=world_size, input_size=input_size,
                         augment=as_augment(augment), num_joints=num_joints, root_index=root_index)
    fingerprint = dict(kind="finetune", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       seed=seed, input_size=input_size)
    return Loader([stream], per_rank_min(n, world_size) // batch_size, fingerprint=fingerprint)


def target_loader(target, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                  augment=True, num_threads: int = 2) -> Loader:
    """Label-free target batches for the attention regulariser: image (B,3,S,S), key. Both
    attention networks see the same augmented image, so augmentation is on by default."""
    tgt = ShardSet.at(target)
    n = tgt.count()
    stream = pose_stream(target_pipeline, tgt, name="target", names=TARGET_OUTPUTS, batch_size=batch_size, seed=seed,
                         rank=rank, num_threads=num_threads, world_size=world_size, input_size=input_size,
                         augment=as_augment(augment))
    fingerprint = dict(kind="target", samples=[n], batch_sizes=[batch_size], rank=rank, world_size=world_size,
                       seed=seed, input_size=input_size)
    return Loader([stream], per_rank_min(n, world_size) // batch_size, fingerprint=fingerprint)

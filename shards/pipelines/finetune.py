"""Stage 2 input (docs/method.md): labelled source crops for the 3D-heatmap loss and label-free target
crops for the attention regulariser (pose.py's training and target pipelines), both in the global
sample order (shards.order)."""
from __future__ import annotations

from ..device import cuda_available
from ..order import BatchPlan
from ..schema import EXT_IMAGE
from .augment import as_augment
from .loader import Loader, Stream
from .pose import LABEL_DTYPES, LABEL_EXTS, TARGET_OUTPUTS, TRAINING_OUTPUTS, target_pipeline, training_pipeline
from .shardset import ShardSet
from .steps import OrderedData, pipeline_kwargs


def pose_stream(pipeline, data: OrderedData, *, name: str, names: tuple, batch_size: int, seed: int, rank: int,
                num_threads: int, input_size: int, augment, dtypes=None, **graph) -> Stream:
    """A Stream of one of the pose training pipelines (pose.py) over `data`, its samples augmented
    by `augment` (an Augment or None); `graph`: the pipeline's own arguments."""
    def build(start):
        source = data.source(rank, start, augment=augment, input_size=input_size, dtypes=dtypes)
        return pipeline(source, gpu=cuda_available(), input_size=input_size, **graph,
                        **pipeline_kwargs(batch_size=batch_size, num_threads=num_threads, seed=seed, rank=rank,
                                          salt=name))
    return Stream(build, batch_size, names, [data.shards])


def finetune_loader(source, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                    global_batch: int | None = None, augment=True, num_threads: int = 2) -> Loader:
    """Labelled source batches: image (B,3,S,S) normalised, joints2d (B,K,2) in input pixels,
    depth_rel_mm (B,K) = z - z_root (root index from the samples' meta), visible (B,K) float,
    has_depth (B,) bool, key. `batch_size` is the micro-batch; `global_batch` (default
    batch_size x world_size) the samples of one optimizer step over all ranks. One epoch =
    floor(samples / global_batch) global batches."""
    src = ShardSet.at(source)
    num_joints, root_index = src.num_joints()
    plan = BatchPlan(global_batch or batch_size * world_size, world_size, batch_size)
    data = OrderedData.of(src, LABEL_EXTS, seed=seed, salt="finetune", plan=plan)
    stream = pose_stream(training_pipeline, data, name="finetune", names=TRAINING_OUTPUTS, batch_size=batch_size,
                         seed=seed, rank=rank, num_threads=num_threads, dtypes=LABEL_DTYPES, input_size=input_size,
                         augment=as_augment(augment), num_joints=num_joints, root_index=root_index)
    fingerprint = dict(kind="finetune", samples=[len(data.catalog)], global_batch=plan.global_batch, seed=seed,
                       input_size=input_size)
    return Loader([stream], data.batches_per_epoch(), fingerprint=fingerprint, accumulation=plan.accumulation)


def target_loader(target, *, batch_size: int, input_size: int = 256, seed: int, rank: int, world_size: int,
                  global_batch: int | None = None, augment=True, num_threads: int = 2) -> Loader:
    """Label-free target batches for the attention regulariser: image (B,3,S,S), key. Both
    attention networks see the same augmented image, so augmentation is on by default."""
    tgt = ShardSet.at(target)
    plan = BatchPlan(global_batch or batch_size * world_size, world_size, batch_size)
    data = OrderedData.of(tgt, [EXT_IMAGE], seed=seed, salt="target", plan=plan)
    stream = pose_stream(target_pipeline, data, name="target", names=TARGET_OUTPUTS, batch_size=batch_size, seed=seed,
                         rank=rank, num_threads=num_threads, input_size=input_size, augment=as_augment(augment))
    fingerprint = dict(kind="target", samples=[len(data.catalog)], global_batch=plan.global_batch, seed=seed,
                       input_size=input_size)
    return Loader([stream], data.batches_per_epoch(), fingerprint=fingerprint, accumulation=plan.accumulation)

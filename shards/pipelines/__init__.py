"""DALI input pipelines over the shards: pre-training (with background replacement), segmentation,
fine-tuning (labelled source + label-free target) and evaluation. Every function returns a
`Loader` (common.py): batches of torch tensors, `len` batches per epoch, JSON-able state."""
from .common import Augment, Loader
from .evaluate import eval_loader
from .finetune import finetune_loader, target_loader
from .pretrain import pretrain_loader, segnet_loader

__all__ = ["Augment", "Loader", "pretrain_loader", "segnet_loader", "finetune_loader", "target_loader",
           "eval_loader"]

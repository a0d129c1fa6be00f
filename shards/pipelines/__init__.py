"""DALI input pipelines over the shards: pre-training (with background replacement), segmentation,
fine-tuning (labelled source + label-free target) and evaluation. Every loader function returns a
`Loader` (loader.py): batches of torch tensors, `len` batches per epoch, JSON-able state.

Modules: pretrain.py and pose.py hold the pipelines, one per purpose; finetune.py and evaluate.py
the pose loaders; steps.py, augment.py and opencv.py the processing steps they share; shardset.py
the shards as the reader sees them; seeds.py the random seeds; loader.py the Loader.

Conventions. Pixel coordinates are continuous, (0, 0) the top-left corner of the first pixel
(pixel centres at +0.5), the convention of DALI's warp_affine/coord_transform and of dataprep's
crops. Images leave the pipelines normalised with the ImageNet mean/std, CHW float32.

CPU vs GPU: one graph. On a CUDA machine (shards.device.cuda_available) images are decoded with
`mixed` and every pixel op runs on the GPU; otherwise the graph runs on the CPU (device_id=None)
with two substitutions that make it about 2x faster there: OpenCV's warp and a uint8 blend
(opencv.py) called from the graph, unless POSEMAE_CPU_IMAGE_OPS=dali. Random numbers, affine
matrices and joints are small CPU tensors either way, and the augmentation's random numbers are
each sample's own (shards.ordered_source: drawn from its position in the global order), so the
substitutions, any rank and any number of ranks draw the same augmentation.

Reading: every training loader reads its shards in the global sample order (shards.order) through
an external source with spawned worker processes (shards.ordered_source); the position of a
Loader is the global optimizer step. steps.reader (DALI's webdataset reader) and augment's
seeded operators remain for bench/data_pipeline's comparison.
"""
from .augment import Augment
from .evaluate import eval_loader
from .finetune import finetune_loader, target_loader
from .loader import Loader
from .pretrain import pretrain_loader, segnet_loader

__all__ = ["Augment", "Loader", "pretrain_loader", "segnet_loader", "finetune_loader", "target_loader",
           "eval_loader"]

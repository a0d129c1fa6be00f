"""A fine-tuned pose model from its checkpoint, for the commands that use one (evaluate, predict,
export): its architecture and heatmap volume read from the run's records (ModelSpec), and the
model itself.

Public API
    model_spec(path) -> ModelSpec            a run directory, its checkpoints/ directory or a tag
    load_checkpoint(path, device="cpu") -> (PoseModel in eval mode, ModelSpec)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shards.joints import POSE_KINDS, pose_kind
from shards.schema import JOINT_ORDERS
from trainer import checkpoints
from trainer.baselines import mean_pose, meta_mean_pose
from trainer.errors import CheckpointError
from trainer.heatmaps import DEPTH_RANGE_MM
from trainer.pose import PoseModel, load_pose_model
from trainer.reconstruct import HeatmapVolume


@dataclass
class ModelSpec:
    """What evaluation needs to know about a fine-tuned pose model: its architecture (to rebuild
    it), its input size and its heatmap volume (to decode), and where it came from."""
    checkpoint: str                  # the DeepSpeed tag directory
    run_dir: str | None              # the run directory holding config.json, when there is one
    step: int | None
    joint_order: str
    encoder: dict                    # ViTEncoder keyword arguments
    num_joints: int
    depth_bins: int
    head_channels: int
    depth_range_mm: float
    deconv_layers: int = 2
    mean_pose: dict | None = None    # trainer.baselines.MeanPose of the fine-tuning source, when known

    @property
    def input_size(self) -> int:
        size = self.encoder.get("img_size", 256)
        return int(size if isinstance(size, int) else size[0])

    @property
    def heatmap_size(self) -> int:
        """The token grid upsampled 2x per head deconvolution."""
        return self.input_size // self.encoder.get("patch_size", 16) * 2 ** self.deconv_layers

    def volume(self, heatmap_size: int | None = None) -> HeatmapVolume:
        return HeatmapVolume(self.input_size, heatmap_size or self.heatmap_size, self.depth_bins, self.depth_range_mm)


def _run_dir_of(tag_dir: Path) -> Path | None:
    """The run directory of a checkpoint tag: the nearest parent holding config.json."""
    for parent in (tag_dir, *tag_dir.parents[:3]):
        if (parent / "config.json").is_file():
            return parent
    return None


def model_spec(path) -> ModelSpec:
    """Read the architecture of a fine-tuning checkpoint from its posemae.json sidecar (the model
    signature the finetune stage records) and, for anything the signature leaves out, its run's
    config.json options."""
    tag_dir = checkpoints.checkpoint_tag_dir(path)
    meta = checkpoints.read_checkpoint_meta(tag_dir)
    run_dir = _run_dir_of(tag_dir)
    options = dict(meta.get("options") or {})
    if run_dir is not None:
        config = json.loads((run_dir / "config.json").read_text())
        options = {**config.get("options", {}), **options}
    signature = dict(meta.get("model") or {})
    if meta.get("stage") != "finetune" or signature.get("class") != "PoseModel":
        raise CheckpointError(f"{tag_dir} is a {meta.get('stage')} checkpoint of a {signature.get('class')}: "
                              "evaluate a fine-tuning (PoseModel) checkpoint")

    def need(name):
        for source in (signature, options):
            if source.get(name) is not None:
                return source[name]
        raise CheckpointError(f"{tag_dir}: neither posemae.json's model signature nor config.json records "
                              f"{name!r}; cannot rebuild the model")

    joint_order = need("joint_order")
    if joint_order not in POSE_KINDS:
        raise CheckpointError(f"{tag_dir}: joint order {joint_order!r} is not one this evaluation knows "
                              f"({sorted(POSE_KINDS)})")
    depth_range = signature.get("depth_range_mm", options.get("depth_range_mm"))
    mean = meta_mean_pose(options)
    if mean is None and options.get("source") and Path(options["source"]).is_dir():
        mean = mean_pose(options["source"])          # a run from before the mean pose was recorded
    return ModelSpec(
        checkpoint=str(tag_dir), run_dir=None if run_dir is None else str(run_dir), step=meta.get("step"),
        joint_order=joint_order, encoder=dict(need("encoder")), num_joints=int(need("num_joints")),
        depth_bins=int(need("depth_bins")), head_channels=int(signature.get("head_channels", 256)),
        deconv_layers=int(signature.get("deconv_layers", 2)),
        depth_range_mm=float(depth_range if depth_range is not None else DEPTH_RANGE_MM[pose_kind(joint_order)]),
        mean_pose=None if mean is None else mean.to_dict())


def load_checkpoint(path, device="cpu") -> tuple[PoseModel, ModelSpec]:
    """The pose model of a fine-tuning checkpoint (trainer.pose.load_pose_model: strict load,
    torch.load weights_only=True) on `device`, in eval mode, with its ModelSpec."""
    spec = model_spec(path)
    if spec.num_joints != len(JOINT_ORDERS[spec.joint_order]):
        raise CheckpointError(f"{spec.checkpoint}: {spec.num_joints} joints but joint order {spec.joint_order} "
                              f"has {len(JOINT_ORDERS[spec.joint_order])}")
    model, _ = load_pose_model(spec.checkpoint)
    return model.to(device).eval(), spec

"""`trainer export`: a fine-tuned pose model for people who do not use this project.

    trainer export --ckpt runs/ft --out exported/

writes
    model.onnx          the whole network, images (B, 3, H, W) -> heatmaps (B, K, Dz, H/4, W/4),
                        batch dimension dynamic; runs on onnxruntime, TensorRT, OpenVINO, ...
    model.safetensors   the same weights, float32, keyed like timm's VisionTransformer under
                        `encoder.` plus the deconvolution head under `head.` (an nn.Sequential);
                        the encoder's fixed sin-cos position embedding is written out as
                        `encoder.pos_embed` so timm can load the encoder as it is
    config.json         everything needed to feed the network and to decode its output: input
                        size and normalisation, joint order and names, the heatmap volume and the
                        formulas from voxels to pixels and millimetres, the architecture

The ONNX graph is exported from the model in eval mode (BatchNorm running statistics, no drop
path). `check_onnx` runs the written file with onnxruntime on random input and compares its
heatmaps with PyTorch's; `trainer export` does that before it returns and records the difference.

Public API
    export(ckpt, out_dir, opset=18, check=True) -> dict      the config.json written
    write_export(model, spec, out_dir, opset=18, check=True) -> dict
    export_state_dict(model) -> dict[str, Tensor]             what model.safetensors holds
    check_onnx(model, onnx_path, input_size, batch=2, seed=0) -> float   max |onnx - torch|
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np
import torch

from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from shards.schema import JOINT_ORDERS
from trainer import engine
from trainer.pose import PoseModel

DEFAULT_OPSET = 18      # scaled_dot_product_attention and LayerNormalization export natively from 17 on
FORMAT = "posemae-pose-model"
FORMAT_VERSION = 1
ROOT_JOINT = {"hand21": "wrist", "h36m17": "pelvis"}


def export_state_dict(model: PoseModel) -> dict:
    """The model's state dict plus the fixed position embedding (a buffer kept out of our own
    checkpoints, which recompute it), float32, contiguous: what model.safetensors holds."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state["encoder.pos_embed"] = model.encoder.pos_embed.detach().cpu().float().contiguous()
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def describe(model: PoseModel, spec, opset: int) -> dict:
    """config.json: how to prepare the input and decode the output, without this project."""
    size = spec.input_size
    with torch.no_grad():   # the head's depth decides the heatmap size: read it off a forward pass
        D, H, W = model.float().cpu().eval()(torch.zeros(1, 3, size, size)).shape[2:]
    enc = spec.encoder
    patch = enc.get("patch_size", 16)
    deconvs = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.head)
    kinds = {torch.nn.ConvTranspose2d: "ConvTranspose2d 4x4 s2 p1 no bias", torch.nn.BatchNorm2d: "BatchNorm2d",
             torch.nn.Conv2d: "Conv2d 1x1"}
    head_keys = ", ".join(f"head.{i} {kinds[type(m)]}" for i, m in enumerate(model.head) if type(m) in kinds)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "source_checkpoint": spec.checkpoint, "step": spec.step,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW",
                  "colour": "RGB", "preprocess": "a square crop around the hand/body resized to input size; "
                  "x = (rgb / 255 - mean) / std", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "output": {"name": "heatmaps", "shape": ["batch", spec.num_joints, D, H, W],
                   "axes": ["batch", "joint", "depth_bin (z)", "row (v)", "column (u)"],
                   "meaning": "3D Gaussian heatmap per joint; the peak is the joint's voxel"},
        "joint_order": spec.joint_order, "joint_names": list(JOINT_ORDERS[spec.joint_order]),
        "root_joint": ROOT_JOINT.get(spec.joint_order),
        "heatmap": {"depth_bins": D, "height": H, "width": W, "stride_px": size / W,
                    "depth_range_mm": spec.depth_range_mm,
                    "decode": {
                        "voxel_centres": "voxel centres at integer coordinates; pixel (0, 0) is the top-left "
                                         "corner of the first input pixel",
                        "u_px": "(u + 0.5) * stride_px", "v_px": "(v + 0.5) * stride_px",
                        "z_rel_mm": "((z + 0.5) / depth_bins - 0.5) * depth_range_mm, depth relative to the "
                                    "root joint (positive = farther from the camera)",
                        "camera": "with the crop's intrinsics (fx, fy, cx, cy in input pixels) and a root "
                                  "depth Z_root: Z = z_rel_mm + Z_root, X = (u_px - cx) Z / fx, "
                                  "Y = (v_px - cy) Z / fy"}},
        "architecture": {
            "encoder": "ViT (timm VisionTransformer layout: class token, "
                       + ("learned" if enc.get("learned_pos_embed") else "fixed 2D sin-cos")
                       + " position embedding, pre-norm blocks with qkv bias, LayerNorm eps 1e-6, final norm)",
            "img_size": size, "patch_size": patch, "embed_dim": enc["embed_dim"],
            "depth": enc["depth"], "num_heads": enc["num_heads"], "mlp_ratio": enc.get("mlp_ratio", 4.0),
            "head": f"patch tokens (class token dropped) -> (C, H/{patch}, W/{patch}) -> {deconvs} x "
                    "[ConvTranspose2d 4x4 s2 p1 no bias + BatchNorm2d + ReLU] -> Conv2d 1x1 to K*Dz, viewed as "
                    f"(K, Dz, {H}, {W})",
            "deconv_layers": deconvs, "head_channels": spec.head_channels, "num_joints": spec.num_joints,
            "depth_bins": D,
            "safetensors_keys": "encoder.* = timm VisionTransformer keys (pos_embed included); " + head_keys},
        "onnx": {"file": "model.onnx", "opset": opset, "dynamic_axes": ["batch"]},
        "safetensors": {"file": "model.safetensors"},
        "torch": torch.__version__,
    }


def check_onnx(model: PoseModel, onnx_path, input_size: int, batch: int = 2, seed: int = 0) -> float:
    """Run the ONNX file with onnxruntime on random input (another batch size than the export's,
    to exercise the dynamic axis); the largest absolute difference from PyTorch's heatmaps."""
    import onnxruntime as ort
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 3, input_size, input_size),
                                                                      dtype=np.float32))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["heatmaps"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model.float().cpu().eval()(x).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"{onnx_path}: onnxruntime returned {got.shape}, PyTorch {want.shape}")
    return float(np.abs(got - want).max())


def write_export(model: PoseModel, spec, out_dir, opset: int = DEFAULT_OPSET, check: bool = True) -> dict:
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    config = describe(model, spec, opset)
    size = spec.input_size
    example = torch.zeros(2, 3, size, size)   # not 1: torch.export would specialise a batch of 1
    onnx_path = out_dir / "model.onnx"
    tmp = onnx_path.with_name("model.onnx.tmp")
    # torch.export-based exporter (the TorchScript one is deprecated); weights inline, so that
    # model.onnx is one self-contained file (ViT-L's pose model is ~1.2 GB, under protobuf's 2 GB).
    torch.onnx.export(model, (example,), str(tmp), dynamo=True, opset_version=opset, input_names=["images"],
                      output_names=["heatmaps"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      external_data=False, verbose=False)
    os.replace(tmp, onnx_path)
    tensors = export_state_dict(model)
    save_file(tensors, str(out_dir / "model.safetensors"),
              metadata={"format": FORMAT, "config": json.dumps(config["architecture"])})
    if check:
        config["onnx"]["max_abs_diff_vs_torch"] = check_onnx(model, onnx_path, size, batch=2)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    return config


def export(ckpt, out_dir, opset: int = DEFAULT_OPSET, check: bool = True) -> dict:
    from trainer.pose_checkpoint import load_checkpoint
    model, spec = load_checkpoint(ckpt, device="cpu")
    return write_export(model, spec, out_dir, opset, check)


@click.command("export")
@click.option("--ckpt", required=True, help="fine-tuning run directory, its checkpoints/ or a tag directory")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="output directory")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset")
@click.option("--no-check", is_flag=True, help="skip running the ONNX file with onnxruntime against PyTorch")
@engine.clear_errors
def cli(ckpt, out_dir, opset, no_check):
    """Export a fine-tuned pose model as ONNX + safetensors + config.json."""
    config = export(ckpt, out_dir, opset, check=not no_check)
    diff = config["onnx"].get("max_abs_diff_vs_torch")
    click.echo(f"wrote {out_dir}/model.onnx (opset {opset}), model.safetensors, config.json"
               + ("" if diff is None else f"; onnxruntime vs PyTorch max |diff| {diff:.2e}"))

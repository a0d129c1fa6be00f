"""`trainer evaluate` (docs/method.md "Decoding and metrics"): fine-tuned checkpoints x benchmark shard
sets -> per-sample predictions, metrics, paper-style tables and figures.

For every checkpoint (a fine-tuning run directory, its checkpoints/ directory or one tag
directory) and every shard set:
  1. the shards are checked against the model before any compute (`scan_shards`): manifest and
     sha256, unique keys, the model's joint order, 3D joints and crop intrinsics present. Bad
     shards stop with one SampleError naming the file and the sample;
  2. each rank runs its part of the DALI eval loader through the model (`predict`): heatmaps ->
     voxel (u, v, z) by argmax with sub-voxel refinement or soft-argmax, plus the last block's
     class-token attention;
  3. the per-sample results of all ranks are gathered (`gather_predictions`), the loader's
     padding dropped, and every sample of the shard set must come back exactly once;
  4. `reconstruct_joints`: voxels -> stored-crop pixels -> camera millimetres with the sample's
     intrinsics and ground-truth root depth; mirrored (left) hands are un-mirrored, prediction and
     ground truth alike, so the outputs are in each image's original camera frame;
  5. the trivial baseline on the same samples (trainer.baselines): the constant prediction of
     each fine-tuning source's mean root-relative pose, one table row per distinct source, so
     every table shows how far above trivial each model is;
  6. metrics per protocol (trainer.metrics), then, on rank 0, the outputs in --out:
       results.json                        every number, the checkpoints, the shards, the code version
       results.md                          the table(s), laid out like the paper's Tables 1 and 2 (also printed)
       predictions/<label>__<dataset>.npz  per sample, in storage order: keys, uvz_vox (decoded voxels),
                                           joints3d_pred_mm / joints3d_gt_mm (original camera frame, un-mirrored),
                                           uv_pred_crop_px, root_depth_mm, mirrored, attention_last_block (N),
                                           stored_* (the loader's arrays as stored: crop frame, mirrored),
                                           <protocol>__<metric> (NaN where the protocol left a sample out)
       pck_<protocol>.png                  3D PCK curves, one per (checkpoint, dataset)
       sheet_<label>__<dataset>.png        best and worst predictions: 2D overlay, 3D from two views,
                                           the last block's class-token attention (Figures 3-5)

    trainer evaluate --ckpt runs/ft --shards shards/rhd/test --shards shards/stb/test
    deepspeed --num_gpus 8 --module trainer evaluate --ckpt runs/ft --ckpt runs/mae --name Ours --name MAE \\
        --shards shards/rhd/test --out runs/table1
    trainer evaluate --compare runs/ft runs/mae runs/scratch     (one table over their results.json)

Public API
    evaluate(checkpoints, shards, *, names=None, protocols=None, decode="argmax", out_dir=None,
             batch_size=32, sheet_count=4, paper=False) -> dict      (results.json's content on rank 0)
    load_checkpoint(path, device="cpu") -> (PoseModel, ModelSpec)   (from trainer.pose_checkpoint)
    scan_shards(path, joint_order) -> ShardInfo
    predict(model, loader, decode="argmax") -> dict of per-sample numpy arrays (this rank)
    model_outputs(model, batch) -> (heatmaps (B,K,D,H,W), last block's class-token attention (B,N))
    gather_predictions(local, info, dist) -> dict in storage order, every sample once
    reconstruct_joints(pred, info, spec) -> dict with joints3d_pred_mm, joints3d_gt_mm, uv_pred_crop_px
    EvaluationError (SampleError)
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from shards.device import cuda_available
from shards.reader import check_manifest, tar_samples
from shards.schema import (EXT_IMAGE, EXT_INTRINSICS, EXT_JOINTS2D, EXT_JOINTS3D, EXT_META, EXT_VISIBLE,
                           JOINT_ORDERS, SampleError)
from trainer import engine, report
from trainer.baselines import MeanPose, constant_prediction
from trainer.heatmaps import decode_heatmaps
from trainer.metrics import PROTOCOLS, Protocol, evaluate as evaluate_protocol
from trainer.errors import ConfigError
from trainer.pose import PoseModel
from trainer.pose_checkpoint import ModelSpec, load_checkpoint, model_spec  # noqa: F401  (evaluate's API too)
from trainer.reconstruct import apply_affine, invert_affine, reconstruct, unmirror

DECODERS = ("argmax", "soft_argmax")
DEFAULT_PROTOCOL = {"hand21": "hand", "h36m17": "h36m17"}


class EvaluationError(SampleError):
    """Shards that cannot be evaluated with this model, or an evaluation that lost samples."""


# -- the shards -----------------------------------------------------------------------------
@dataclass
class ShardInfo:
    """A benchmark shard set as evaluation sees it: storage-ordered keys and the per-sample meta
    that the DALI loader does not carry (mirroring, root joint)."""
    path: str
    dataset: str
    split: str | None
    joint_order: str
    keys: list[str]
    mirrored: np.ndarray                         # (S,) bool
    root_index: np.ndarray                       # (S,) int
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


# Members a sample must carry for 3D evaluation, and their sizes in bytes for K joints.
_REQUIRED_MEMBERS = {EXT_IMAGE: None, EXT_JOINTS3D: lambda k: 12 * k, EXT_JOINTS2D: lambda k: 8 * k,
                     EXT_VISIBLE: lambda k: k, EXT_INTRINSICS: lambda k: 16, EXT_META: None}
_WHY = {EXT_JOINTS3D: "3D joints", EXT_INTRINSICS: "crop intrinsics", EXT_JOINTS2D: "2D joints",
        EXT_VISIBLE: "visibility", EXT_IMAGE: "image", EXT_META: "json meta"}


def scan_shards(path, joint_order: str) -> ShardInfo:
    """Check a shard set against a model of `joint_order` and collect its per-sample meta.
    Reads only the tar headers and the json members: cheap next to decoding the images."""
    path = Path(path)
    manifest, files = check_manifest(path)
    manifest_order = manifest.get("joint_order")
    if manifest_order is not None and manifest_order != joint_order:
        raise EvaluationError(f"shards are in joint order {manifest_order!r}, the model predicts {joint_order!r}",
                              file=str(path / "manifest.json"))
    k = len(JOINT_ORDERS[joint_order])
    keys, mirrored, roots, datasets, splits = [], [], [], set(), set()
    seen: dict[str, str] = {}
    for f in files:
        for key, members, tf in tar_samples(f):
            if key in seen:
                raise EvaluationError(f"key also in {seen[key]}: every sample must be counted once",
                                      file=str(f), sample=key)
            seen[key] = str(f)
            if EXT_META not in members:
                raise EvaluationError(f"no {EXT_META} (json meta)", file=str(f), sample=key)
            try:
                meta = json.loads(tf.extractfile(members[EXT_META]).read())
            except ValueError as e:
                raise EvaluationError(f"unreadable json meta: {e}", file=str(f), sample=key) from None
            if meta.get("joint_order") != joint_order:
                raise EvaluationError(f"joint order {meta.get('joint_order')!r} does not match the model's "
                                      f"{joint_order!r}", file=str(f), sample=key)
            for ext, size in _REQUIRED_MEMBERS.items():
                if ext not in members:
                    raise EvaluationError(f"no {ext} ({_WHY[ext]}): 3D evaluation needs it", file=str(f), sample=key)
                if size is not None and members[ext].size != size(k):
                    raise EvaluationError(f"{ext} has {members[ext].size} bytes, {size(k)} expected for "
                                          f"{k} {joint_order} joints", file=str(f), sample=key)
            keys.append(key)
            mirrored.append(bool(meta.get("mirrored", False)))
            roots.append(int(meta.get("root_index") or 0))
            datasets.add(str(meta.get("dataset", manifest.get("dataset", path.name))))
            splits.add(meta.get("split"))
    if not keys:
        raise EvaluationError("no samples", file=str(path))
    if len(keys) != manifest.get("samples", len(keys)):
        raise EvaluationError(f"{len(keys)} samples in the shards, manifest.json says {manifest['samples']}",
                              file=str(path))
    if len(datasets) != 1:
        raise EvaluationError(f"one shard set per dataset, found {sorted(datasets)}", file=str(path))
    return ShardInfo(str(path), datasets.pop(), splits.pop() if len(splits) == 1 else None, joint_order, keys,
                     np.array(mirrored, bool), np.array(roots, np.int64), [str(f) for f in files])


def read_images(info: ShardInfo, keys) -> dict[str, np.ndarray]:
    """The stored crops (H x W x 3 uint8) of a few samples, for the contact sheet."""
    wanted, found = set(keys), {}
    for f in info.files:
        for key, members, tf in tar_samples(f):
            if key in wanted:
                try:
                    with Image.open(tf.extractfile(members[EXT_IMAGE])) as im:
                        found[key] = np.asarray(im.convert("RGB"))
                except OSError as e:
                    raise EvaluationError(f"undecodable image: {e}", file=f, sample=key) from None
        if len(found) == len(wanted):
            break
    return found


# -- inference ------------------------------------------------------------------------------
def model_outputs(model: PoseModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch through the model: heatmaps (B, K, D, H, W) and the last block's class-token
    attention over the patches (B, N)."""
    param = next(model.parameters())
    heatmaps, attention = model.forward_with_cls_attention(batch["image"].to(param.device, param.dtype))
    return heatmaps, attention[:, -1]


# Per-sample arrays `predict` collects, with the batch entries they come from.
_GROUND_TRUTH = ("joints3d_mm", "joints2d_px", "visible", "intrinsics", "crop_to_input")


@torch.inference_mode()
def predict(model: PoseModel, loader, decode: str = "argmax") -> dict:
    """This rank's share of the loader: {"keys": [...], "uvz_vox", "attention", ground truth...}
    as numpy arrays, the loader's padding dropped; "heatmap_shape" is (D, H, W)."""
    if decode not in DECODERS:
        raise ValueError(f"unknown decoding {decode!r}; choose from {DECODERS}")
    model.eval()
    out = {name: [] for name in ("uvz_vox", "attention", *_GROUND_TRUTH)}
    keys, heatmap_shape = [], None
    for batch in loader:
        valid = batch["valid"].cpu().numpy() if "valid" in batch else np.ones(len(batch["key"]), bool)
        if "has_3d" in batch and not bool(batch["has_3d"].cpu()[torch.from_numpy(valid)].all()):
            missing = [k for k, v, h in zip(batch["key"], valid, batch["has_3d"].cpu().numpy()) if v and not h]
            raise EvaluationError("sample without 3D joints or intrinsics reached the model", sample=missing[0])
        heatmaps, attention = model_outputs(model, batch)
        heatmap_shape = tuple(heatmaps.shape[-3:])
        uvz = decode_heatmaps(heatmaps, decode)
        out["uvz_vox"].append(uvz.float().cpu().numpy()[valid])
        out["attention"].append(attention.float().cpu().numpy()[valid])
        for name in _GROUND_TRUTH:
            out[name].append(batch[name].cpu().numpy()[valid])
        keys += [k for k, v in zip(batch["key"], valid) if v]
    result = {name: (np.concatenate(v) if v else np.zeros((0,))) for name, v in out.items()}
    result["keys"] = keys
    result["heatmap_shape"] = heatmap_shape
    return result


def gather_predictions(local: dict, info: ShardInfo, dist: engine.Dist) -> dict:
    """All ranks' predictions on every rank, in the shards' storage order. Raises when a sample
    is missing or came back twice: each sample is counted exactly once."""
    if dist.world_size > 1:
        parts = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, local)
    else:
        parts = [local]
    keys = [k for p in parts for k in p["keys"]]
    position = {k: i for i, k in enumerate(info.keys)}
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    twice = [k for k, c in counts.items() if c > 1]
    unknown = [k for k in counts if k not in position]
    missing = [k for k in info.keys if k not in counts]
    if twice or unknown or missing:
        raise EvaluationError(
            f"evaluation over {dist.world_size} rank(s) returned {len(keys)} predictions for {len(info)} samples: "
            + "; ".join(f"{what} {ks[:5]}" for what, ks in (("counted twice", twice), ("not in the shards", unknown),
                                                              ("missing", missing)) if ks), file=info.path)
    order = np.argsort([position[k] for k in keys], kind="stable")
    shapes = {p["heatmap_shape"] for p in parts if p["heatmap_shape"] is not None}
    merged = {"keys": [keys[i] for i in order], "heatmap_shape": shapes.pop()}
    for name in ("uvz_vox", "attention", *_GROUND_TRUTH):
        merged[name] = np.concatenate([p[name] for p in parts if len(p["keys"])])[order]
    return merged


# -- reconstruction and metrics -------------------------------------------------------------
def reconstruct_joints(pred: dict, info: ShardInfo, spec: ModelSpec) -> dict:
    """Predicted voxels -> camera millimetres with each sample's intrinsics and ground-truth root
    depth (docs/method.md); mirrored samples of both prediction and ground truth are un-mirrored."""
    depth, height, width = pred["heatmap_shape"]
    if height != width or depth != spec.depth_bins:
        raise EvaluationError(f"heatmaps of shape {pred['heatmap_shape']} do not match the model's "
                              f"{spec.depth_bins} depth bins on a square grid", file=spec.checkpoint)
    volume = spec.volume(height)
    gt = pred["joints3d_mm"].astype(np.float64)
    root_depth = gt[np.arange(len(gt)), info.root_index, 2]
    out = reconstruct(pred["uvz_vox"], pred["crop_to_input"], pred["intrinsics"], root_depth, volume,
                      mirrored=info.mirrored)
    return {"joints3d_pred_mm": out.joints3d_mm, "joints3d_gt_mm": unmirror(gt, info.mirrored),
            "uv_pred_crop_px": out.uv_crop_px, "root_depth_mm": root_depth}


def protocols_for(joint_order: str, names) -> list[Protocol]:
    names = list(names) if names else [DEFAULT_PROTOCOL[joint_order]]
    chosen = []
    for name in names:
        if name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
        protocol = PROTOCOLS[name]
        if protocol.joint_order != joint_order:
            raise EvaluationError(f"protocol {name!r} is for {protocol.joint_order} skeletons, the model "
                                  f"predicts {joint_order}")
        chosen.append(protocol)
    return chosen


def score(joints: dict, visible: np.ndarray, protocol: Protocol):
    """One protocol over every sample -> (ProtocolResult, keep mask). Protocols that count visible
    joints only cannot score a sample without any: keep is False there (results.json lists them
    as excluded_samples)."""
    visible = np.asarray(visible) > 0.5
    keep = np.ones(len(visible), bool)
    if protocol.visible_only:
        vis = visible.copy()
        if protocol.palm_replaces_wrist:
            vis[:, 0] |= vis[:, 9]
        subset = list(protocol.joints) if protocol.joints is not None else slice(None)
        keep = vis[:, subset].any(axis=1)
    result = evaluate_protocol(joints["joints3d_pred_mm"][keep], joints["joints3d_gt_mm"][keep], visible[keep],
                               protocol)
    return result, keep


# -- outputs --------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def contact_sheet_items(pred: dict, joints: dict, errors: np.ndarray, indices, spec: ModelSpec, metric: str,
                        images: dict) -> list[report.SheetItem]:
    """Best/worst samples shown in the network's input frame, so that the class-token attention
    over the input patches lies on the image it was computed from."""
    size = spec.input_size
    grid = size // spec.encoder.get("patch_size", 16)
    items = []
    for i in indices:
        key = pred["keys"][i]
        crop_to_input = pred["crop_to_input"][i].astype(np.float64)
        inverse = invert_affine(crop_to_input)[0]      # PIL maps output pixels back to the source
        image = np.asarray(Image.fromarray(images[key]).transform(
            (size, size), Image.AFFINE, data=tuple(inverse.ravel()), resample=Image.BILINEAR))

        def to_input(uv):
            return apply_affine(crop_to_input, np.asarray(uv, np.float64)[None])[0]
        items.append(report.SheetItem(
            image=image, uv_pred=to_input(joints["uv_pred_crop_px"][i]), uv_gt=to_input(pred["joints2d_px"][i]),
            joints_pred=joints["joints3d_pred_mm"][i], joints_gt=joints["joints3d_gt_mm"][i],
            attention=pred["attention"][i].reshape(grid, -1),
            title=f"{key}  {report.METRIC_LABELS.get(metric, metric)} {errors[i]:.1f} mm"))
    return items


CONSTANT_LABEL = "Mean source pose (constant)"


def constant_baselines(specs: list[ModelSpec]) -> dict[str, MeanPose]:
    """Table label -> mean pose, one per distinct mean pose of the checkpoints' fine-tuning sources."""
    means: dict[tuple, MeanPose] = {}
    for spec in specs:
        if spec.mean_pose is not None:
            mean = MeanPose.from_dict(spec.mean_pose)
            # keyed by value: one source named two ways (relative, absolute path) is one row
            means.setdefault((mean.joint_order, tuple(np.round(mean.joints_mm, 2).ravel())), mean)
    if len(means) == 1:
        return {CONSTANT_LABEL: next(iter(means.values()))}
    return {f"Mean pose of {mean.source} (constant)": mean for mean in means.values()}


def report_constant(mean: MeanPose, pred: dict, info: ShardInfo, *, label: str, dataset: str,
                    protocols: list[Protocol], world_size: int) -> "PairOutput":
    """Rank 0: the constant prediction scored like a model on the samples `pred` holds (their
    stored ground truth; mirrored samples un-mirrored as reconstruct_joints does)."""
    stored_gt = pred["joints3d_mm"].astype(np.float64)
    joints = {"joints3d_pred_mm": unmirror(constant_prediction(mean, stored_gt), info.mirrored),
              "joints3d_gt_mm": unmirror(stored_gt, info.mirrored)}
    out = PairOutput([], {})
    for protocol in protocols:
        result, keep = score(joints, pred["visible"], protocol)
        out.evaluations.append(report.evaluation_record(
            result, method=label, checkpoint=None, dataset=dataset, shards=[info.path],
            keys=[k for k, ok in zip(pred["keys"], keep) if ok], split=info.split, baseline="constant",
            mean_pose=mean.to_dict(), excluded_samples=[k for k, ok in zip(pred["keys"], keep) if not ok],
            world_size=world_size))
        auc_key = next(k for k in result.summary if k.startswith("auc_"))
        legend = f"{label} / {report.DATASET_LABELS.get(dataset, dataset)} (AUC {result.summary[auc_key]:.3f})"
        out.curves[protocol.name] = {legend: result.pck_curve}
    return out


@dataclass
class PairOutput:
    evaluations: list          # results.json entries, one per protocol
    curves: dict               # protocol name -> {legend label: (thresholds, pck)}


def report_pair(pred: dict, info: ShardInfo, spec: ModelSpec, *, label: str, dataset: str,
                protocols: list[Protocol], decode: str, out_dir: Path, sheet_count: int,
                world_size: int) -> PairOutput:
    """Rank 0, one checkpoint on one shard set: reconstruction, every protocol's metrics, the
    per-sample npz and the contact sheet (samples ranked by the first protocol's headline)."""
    joints = reconstruct_joints(pred, info, spec)
    stem = f"{_safe(label)}__{_safe(dataset)}"
    arrays = {"keys": np.array(pred["keys"]), "uvz_vox": pred["uvz_vox"], "mirrored": info.mirrored,
              "attention_last_block": pred["attention"], **joints,
              **{f"stored_{name}": pred[name] for name in _GROUND_TRUTH}}
    sheet_path = out_dir / f"sheet_{stem}.png"
    out = PairOutput([], {})
    for n, protocol in enumerate(protocols):
        result, keep = score(joints, pred["visible"], protocol)
        for metric, values in result.per_sample.items():     # NaN where a protocol left a sample out
            full = np.full(len(keep), np.nan)
            full[keep] = values
            arrays[f"{protocol.name}__{metric}"] = full
        out.evaluations.append(report.evaluation_record(
            result, method=label, checkpoint=spec.checkpoint, dataset=dataset, shards=[info.path],
            keys=[k for k, ok in zip(pred["keys"], keep) if ok], split=info.split, decode=decode,
            checkpoint_step=spec.step, excluded_samples=[k for k, ok in zip(pred["keys"], keep) if not ok],
            predictions=f"predictions/{stem}.npz", contact_sheet=sheet_path.name if sheet_count > 0 else None,
            world_size=world_size))
        auc_key = next(k for k in result.summary if k.startswith("auc_"))
        legend = f"{label} / {report.DATASET_LABELS.get(dataset, dataset)} (AUC {result.summary[auc_key]:.3f})"
        out.curves[protocol.name] = {legend: result.pck_curve}
        if n == 0 and sheet_count > 0:
            errors = arrays[f"{protocol.name}__{protocol.metric}"]
            ranked = np.flatnonzero(keep)
            best, worst = (ranked[i] for i in report.select_best_worst(errors[ranked], sheet_count))
            images = read_images(info, [pred["keys"][i] for i in (*best, *worst)])
            report.contact_sheet(
                {f"best: {label} on {dataset}": contact_sheet_items(pred, joints, errors, best, spec, protocol.metric,
                                                                    images),
                 f"worst: {label} on {dataset}": contact_sheet_items(pred, joints, errors, worst, spec,
                                                                     protocol.metric, images)},
                spec.joint_order, sheet_path)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "predictions" / f"{stem}.npz", **arrays)
    return out


def _device(dist: engine.Dist) -> torch.device:
    return torch.device("cuda", dist.local_rank) if cuda_available() else torch.device("cpu")


def evaluate(checkpoints, shards, *, names=None, protocols=None, decode: str = "argmax", out_dir=None,
             batch_size: int = 32, sheet_count: int = 4, paper: bool = False, num_threads: int = 2) -> dict | None:
    """Evaluate every checkpoint on every shard set on all ranks; rank 0 writes the outputs into
    `out_dir` (default: the run directory of a single checkpoint) and returns results.json's
    content (other ranks return None)."""
    from shards.pipelines import eval_loader
    checkpoints, shards = [str(c) for c in checkpoints], [str(s) for s in shards]
    if not checkpoints or not shards:
        raise ConfigError("give at least one --ckpt and one --shards")
    if len(set(shards)) != len(shards) or len(set(checkpoints)) != len(checkpoints):
        raise ConfigError("a --ckpt or --shards is given twice")
    if names and len(names) != len(checkpoints):
        raise ConfigError(f"{len(names)} --name labels for {len(checkpoints)} --ckpt: give one per checkpoint")
    if decode not in DECODERS:
        raise ConfigError(f"unknown decoding {decode!r}; choose from {DECODERS}")
    specs = [model_spec(c) for c in checkpoints]
    labels = list(names) if names else [Path(s.run_dir).name if s.run_dir else Path(s.checkpoint).name for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"checkpoint labels {labels} repeat: give each a --name")
    if out_dir is None:
        if len(specs) != 1 or specs[0].run_dir is None:
            raise ConfigError("give --out DIR (the default, the run directory, needs a single checkpoint "
                              "of a run)")
        out_dir = specs[0].run_dir
    out_dir = Path(out_dir)
    # Everything that can be checked before compute is, on every rank alike: a bad shard or
    # option stops all ranks at once instead of leaving some waiting in a collective.
    chosen = {spec.joint_order: protocols_for(spec.joint_order, protocols) for spec in specs}
    infos = {}
    for spec in specs:
        for s in shards:
            if (s, spec.joint_order) not in infos:
                infos[s, spec.joint_order] = scan_shards(s, spec.joint_order)
    datasets = {}   # shard set -> table column; the same dataset twice (val, test) gets the directory name
    for s in shards:
        dataset = next(info.dataset for (path, _), info in infos.items() if path == s)
        datasets[s] = dataset if dataset not in datasets.values() else f"{dataset}-{_safe(Path(s).name)}"

    baselines = constant_baselines(specs)
    dist = engine.init_distributed()
    evaluations, curves, baseline_rows = [], {}, []
    for spec, label in zip(specs, labels):
        model, _ = load_checkpoint(spec.checkpoint, _device(dist))
        for s in shards:
            info = infos[s, spec.joint_order]
            loader = eval_loader(s, batch_size=batch_size, input_size=spec.input_size, rank=dist.rank,
                                 world_size=dist.world_size, num_threads=num_threads)
            pred = gather_predictions(predict(model, loader, decode), info, dist)
            if dist.is_main:
                out = report_pair(pred, info, spec, label=label, dataset=datasets[s], protocols=chosen[spec.joint_order],
                                  decode=decode, out_dir=out_dir, sheet_count=sheet_count, world_size=dist.world_size)
                evaluations += out.evaluations
                outputs = [out]
                for base_label, mean in baselines.items():
                    if mean.joint_order == spec.joint_order and not any(
                            e["method"] == base_label and e["shards"] == [info.path] for e in baseline_rows):
                        base = report_constant(mean, pred, info, label=base_label, dataset=datasets[s],
                                               protocols=chosen[spec.joint_order], world_size=dist.world_size)
                        baseline_rows += base.evaluations
                        outputs.append(base)
                for output in outputs:
                    for name, legend_curves in output.curves.items():
                        curves.setdefault(name, {}).update(legend_curves)
        del model
    evaluations = baseline_rows + evaluations     # the trivial row first in every table
    if not dist.is_main:
        return None
    for name, protocol_curves in curves.items():
        report.draw_pck_curves(protocol_curves, out_dir / f"pck_{name}.png", title=f"3D PCK ({name} protocol)")
    table = tables(evaluations, paper=paper)
    options = dict(checkpoints=checkpoints, shards=shards, names=labels, protocols=list(protocols or []),
                   decode=decode, batch_size=batch_size, world_size=dist.world_size)
    path = report.write_results(out_dir, evaluations, command=sys.argv, options=options,
                                models=[asdict(s) for s in specs], table=table)
    (out_dir / "results.md").write_text(table)
    return report.read_results(path)


def tables(evaluations: list[dict], paper: bool = False) -> str:
    """One Markdown table per kind of metric (hands: EPE, bodies: MPJPE / PA-MPJPE)."""
    by_kind: dict[str, list] = {}
    for e in evaluations:
        by_kind.setdefault(e["protocol"]["metric"], []).append(e)
    return "\n".join(report.results_table(by_kind[k], paper=paper) for k in sorted(by_kind))


# -- command line ---------------------------------------------------------------------------
@click.command("evaluate")
@click.option("--ckpt", "checkpoints", multiple=True, help="fine-tuning run directory, its checkpoints/ "
              "directory or a checkpoint tag directory (repeat for several)")
@click.option("--shards", "shards", multiple=True, help="benchmark shard directory (repeat for several)")
@click.option("--name", "names", multiple=True, help="table label per --ckpt, in order (default: run directory name)")
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(sorted(PROTOCOLS)),
              help="metric protocol (repeatable); default hand for hand21 models, h36m17 for bodies")
@click.option("--decode", type=click.Choice(DECODERS), default="argmax", show_default=True,
              help="heatmap decoding: argmax with sub-voxel refinement, or soft-argmax")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output directory (default: the run directory of a single --ckpt)")
@click.option("--batch-size", type=int, default=32, show_default=True, help="per rank")
@click.option("--sheet-count", type=int, default=4, show_default=True,
              help="best and worst samples on each contact sheet (0 = no sheet)")
@click.option("--paper", is_flag=True, help="add the paper's reported numbers as a reference row")
@click.option("--compare", is_flag=True, help="print one table over the results.json of the RUN_DIRS instead")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@engine.clear_errors
def cli(checkpoints, shards, names, protocols, decode, out_dir, batch_size, sheet_count, paper, compare, run_dirs):
    """Evaluate fine-tuned checkpoints on benchmark shards: per-sample predictions, metrics
    (EPE / MPJPE / PA-MPJPE, 3D PCK and AUC), results.json, a paper-style table, PCK curves and
    contact sheets of the best and worst predictions.

    With --compare, print one table over the results.json of RUN_DIRS."""
    if compare:
        if checkpoints or shards:
            raise click.UsageError("--compare takes run directories only, not --ckpt/--shards")
        if not run_dirs:
            raise click.UsageError("--compare needs at least one run directory")
        try:
            click.echo(report.compare(run_dirs, paper=paper))
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        return
    if run_dirs:
        raise click.UsageError(f"unexpected arguments {[str(d) for d in run_dirs]} (run directories go with --compare)")
    result = evaluate(checkpoints, shards, names=names, protocols=protocols, decode=decode, out_dir=out_dir,
                      batch_size=batch_size, sheet_count=sheet_count, paper=paper)
    if result is not None:
        click.echo(result["table"])
        click.echo(f"results: {Path(out_dir or result['models'][0]['run_dir']) / report.RESULTS_FILE}")

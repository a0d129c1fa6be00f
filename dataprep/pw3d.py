"""3DPW (3D Poses in the Wild) -> shards (h36m17, camera-frame millimetres). A target domain.

<root>/sequenceFiles/{train,validation,test}/<seq>.pkl   Python 2 pickles (read with latin1)
<root>/imageFiles/<seq>/image_%05d.jpg                   0-based frame index, 1080x1920 portrait

Pickle keys used: jointPositions (per actor N x 72: 24 SMPL joints, world metres), cam_poses
(N x 4 x 4 world -> camera, X_c = R X_w + t), campose_valid (per actor N), cam_intrinsics (3 x 3),
poses2d (per actor N x 3 x 18, only for --require-poses2d), and for the mesh option poses
(per actor N x 72), betas, genders. One sample per actor per frame whose camera pose is valid.

SMPL-24 -> h36m17: by default the exact shared joints plus documented approximations for spine,
thorax, neck/nose and head (dataprep.bodies.SMPL_APPROXIMATION); with --smpl-models and
--h36m-regressor, an H36M joint regressor applied to the SMPL mesh (the way SPIN/VIBE evaluate),
from model files the user supplies. The manifest records which.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np

from shards.camera import project
from shards.schema import SampleError

from .bodies import APPROXIMATED_H36M, body_crop, crop_sample, in_front, smpl24_to_h36m17
from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, check_array, convert_split, key_part, load_pickle, load_rgb
from .options import checked_splits, conversion_options, driver_kwargs, mesh_from_click_options, mesh_options
from .smpl import MeshJoints, mesh_from_options, mesh_manifest

SPLITS = {"train": "train", "val": "validation", "test": "test"}
GENDERS = {"m": "male", "f": "female"}


def actor_array(data: dict, name: str, tail: tuple, path: Path) -> np.ndarray:
    """A per-actor list of (N, *tail) arrays -> (A, N, *tail) float64."""
    if name not in data:
        raise SampleError(f"pickle lacks {name!r}", file=str(path))
    try:
        a = np.asarray([np.asarray(x, np.float64) for x in data[name]])
    except (TypeError, ValueError) as e:
        raise SampleError(f"{name!r} is not a list of equal-length numeric arrays: {e}", file=str(path)) from None
    if a.ndim != 2 + len(tail) or a.shape[2:] != tail:
        raise SampleError(f"{name!r} has shape {a.shape}, expected (actors, N, {', '.join(map(str, tail))})", file=str(path))
    return a


def load_sequence(path: Path, need_poses2d: bool, need_smpl: bool) -> dict:
    data = load_pickle(path, encoding="latin1")
    if not isinstance(data, dict):
        raise SampleError(f"pickle holds a {type(data).__name__}, expected a dict", file=str(path))
    joints = actor_array(data, "jointPositions", (72,), path)
    n_actors, n = joints.shape[:2]
    seq = {"joints": joints.reshape(n_actors, n, 24, 3)}
    valid = actor_array(data, "campose_valid", (), path)
    for name in ("cam_poses", "cam_intrinsics"):
        if name not in data:
            raise SampleError(f"pickle lacks {name!r}", file=str(path))
    try:
        cam_poses = np.asarray(data["cam_poses"], np.float64)
        k = np.asarray(data["cam_intrinsics"], np.float64)
    except (TypeError, ValueError) as e:
        raise SampleError(f"camera arrays are not numeric: {e}", file=str(path)) from None
    if cam_poses.shape != (n, 4, 4) or k.shape != (3, 3) or valid.shape != (n_actors, n):
        raise SampleError(f"cam_poses {cam_poses.shape}, cam_intrinsics {k.shape}, campose_valid {valid.shape}: expected "
                          f"({n}, 4, 4), (3, 3), ({n_actors}, {n}) for {n_actors} actors x {n} frames", file=str(path))
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise SampleError(f"cam_intrinsics {k.tolist()} is not a camera matrix", file=str(path))
    seq.update(cam_poses=cam_poses, K=k, valid=valid > 0.5)
    if need_poses2d:
        p2d = actor_array(data, "poses2d", (3, 18), path)
        if p2d.shape[:2] != (n_actors, n):
            raise SampleError(f"poses2d has shape {p2d.shape}, expected ({n_actors}, {n}, 3, 18)", file=str(path))
        seq["has_2d"] = np.any(p2d != 0, axis=(2, 3))
    if need_smpl:
        poses = actor_array(data, "poses", (72,), path)
        if poses.shape[:2] != (n_actors, n):
            raise SampleError(f"poses has shape {poses.shape}, expected ({n_actors}, {n}, 72)", file=str(path))
        genders = [GENDERS.get(str(g)) for g in data.get("genders", [])]
        if len(genders) != n_actors or None in genders:
            raise SampleError(f"genders {data.get('genders')!r}: expected 'm'/'f' per actor", file=str(path))
        try:
            betas = [np.asarray(b, np.float64).ravel() for b in data["betas"]]
        except (KeyError, TypeError, ValueError) as e:
            raise SampleError(f"betas missing or not numeric: {e}", file=str(path)) from None
        seq.update(poses=poses, betas=betas, genders=genders)
    return seq


def make_samples(item, *, root: Path, split: str, sequences: dict, require_poses2d: bool, mesh, gender_mode: str,
                 crop_size: int, context: float):
    folder, name, frame = item
    seq = sequences[(folder, name)]
    anno = root / "sequenceFiles" / folder / f"{name}.pkl"
    image_path = root / "imageFiles" / name / f"image_{frame:05d}.jpg"
    frame_key = f"pw3d_{split}_{key_part(name)}_{frame:05d}"
    cam = check_array(seq["cam_poses"][frame], (4, 4), f"cam_poses[{frame}]", anno, frame_key)
    rot, trans = cam[:3, :3], cam[:3, 3]
    k = seq["K"]
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    image = None
    for actor in range(len(seq["joints"])):
        if not seq["valid"][actor, frame] or (require_poses2d and not seq["has_2d"][actor, frame]):
            continue
        key = f"{frame_key}_a{actor}"
        world = check_array(seq["joints"][actor, frame], (24, 3), f"jointPositions[{actor}][{frame}]", anno, key)
        extra = {}
        if mesh is None:
            joints = smpl24_to_h36m17(1000.0 * (world @ rot.T + trans))
        else:
            gender = seq["genders"][actor] if gender_mode == "gendered" else "neutral"
            pose = check_array(seq["poses"][actor, frame], (72,), f"poses[{actor}][{frame}]", anno, key)
            j17_world, fit_mm = mesh.h36m17(gender, pose, seq["betas"][actor], world, anno, key)
            joints = 1000.0 * (j17_world @ rot.T + trans)
            extra = {"smpl_gender": gender, "smpl_fit_mm": round(fit_mm, 3)}
        in_front(joints, anno, key)
        uv = project(joints, (fx, fy, cx, cy))
        if image is None:
            image = load_rgb(image_path, key)
        crop = body_crop(uv, crop_size, context)
        yield crop_sample(
            crop, key, image, joints, uv, (fx, fy, cx, cy),
            meta={"dataset": "3dpw", "split": split, "source": str(image_path.relative_to(root)),
                  "annotation": str(anno.relative_to(root)), "sequence": name, "frame": frame, "actor": actor,
                  "image_size": [image.shape[1], image.shape[0]], "joint_order": "h36m17", "root_index": 0,
                  "root_kind": "pelvis", "joint_mapping": "smpl24 subset" if mesh is None else "h36m regressor on the SMPL mesh",
                  "approximated_joints": APPROXIMATED_H36M if mesh is None else [], **extra, **crop.meta()},
        )


def convert(src_root: Path, out_dir: Path, split: str, *, require_poses2d: bool = False,
            smpl_models: Path | None = None, h36m_regressor: Path | None = None, regressor_order: str = "spin",
            smpl_gender: str = "gendered", max_fit_mm: float = 25.0, mesh: MeshJoints | None = None,
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, **driver) -> dict | None:
    """One split ("train", "val", "test") of 3DPW at `src_root` -> shards in `out_dir`; returns the
    manifest, or None when the split has no sequence files (nothing is written).

    h36m17 from the SMPL-24 subset, or with `smpl_models` and `h36m_regressor` from a regressor on
    the SMPL mesh (smpl.mesh_from_options; pass its result as `mesh` to load the models once for
    several splits). `driver`: convert_split's options. SampleError for an unreadable sequence
    file; ValueError for options that do not go together."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if mesh is None:
        mesh = mesh_from_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm)
    folder = SPLITS[split]
    files = sorted((src_root / "sequenceFiles" / folder).glob("*.pkl"))
    if not files:
        return None
    sequences, items = {}, []
    for path in files:
        seq = load_sequence(path, require_poses2d, mesh is not None)
        keep = seq["valid"] & seq["has_2d"] if require_poses2d else seq["valid"]
        sequences[(folder, path.stem)] = seq
        items += [(folder, path.stem, int(f)) for f in np.nonzero(keep.any(axis=0))[0]]
    make = functools.partial(make_samples, root=src_root, split=split, sequences=sequences,
                             require_poses2d=require_poses2d, mesh=mesh, gender_mode=smpl_gender,
                             crop_size=crop_size, context=context)
    return convert_split(items, make, out_dir, desc=f"pw3d/{split}",
                         manifest_extra={"dataset": "3dpw", "split": split, "joint_order": "h36m17",
                                         "sequences": sorted(name for _, name in sequences),
                                         "validity": "campose_valid" + (" and non-zero poses2d" if require_poses2d else ""),
                                         "smpl_gender": smpl_gender if mesh else None,
                                         **mesh_manifest(mesh, smpl_models, h36m_regressor, regressor_order),
                                         "camera": "cam_intrinsics pinhole; cam_poses world -> camera",
                                         "masks": "none in this dataset", "crop_size": crop_size, "context": context},
                         **driver)


@click.command("pw3d")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,val,test", show_default=True,
              help="comma list of train, val (sequenceFiles/validation), test")
@click.option("--require-poses2d", is_flag=True,
              help="also require non-zero poses2d for a sample, as the official evaluation does (default: campose_valid only)")
@mesh_options
@conversion_options
def cli(src_root, out_dir, splits, require_poses2d, smpl_models, h36m_regressor, regressor_order, smpl_gender,
        max_fit_mm, crop_size, context, **kw):
    """3DPW (sequenceFiles + imageFiles) -> OUT_DIR/{train,val,test}/ shards.

    One sample per actor per frame with a valid camera pose; h36m17 in camera-frame millimetres
    from the SMPL joints (documented subset) or an H36M regressor on the SMPL mesh."""
    mesh = mesh_from_click_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm)
    for split in checked_splits(splits, SPLITS):
        m = convert(src_root, out_dir / split, split, require_poses2d=require_poses2d, smpl_models=smpl_models,
                    h36m_regressor=h36m_regressor, regressor_order=regressor_order, smpl_gender=smpl_gender,
                    max_fit_mm=max_fit_mm, mesh=mesh, crop_size=crop_size, context=context, **driver_kwargs(**kw))
        if m is None:
            click.echo(f"pw3d/{split}: no {src_root}/sequenceFiles/{SPLITS[split]}/*.pkl, nothing written", err=True)
            continue
        click.echo(f"pw3d/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

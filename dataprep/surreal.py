"""SURREAL (synthetic humans, CMU motion) -> shards (h36m17, camera-frame millimetres). A target domain.

<root>/SURREAL/data/cmu/{train,val,test}/run{0,1,2}/<seq>/<seq>_c%04d.mp4        320x240, 30 fps, <= 100 frames
<root>/SURREAL/data/cmu/{train,val,test}/run{0,1,2}/<seq>/<seq>_c%04d_info.mat   v5: joints2D (2,24,T) px,
                                      joints3D (3,24,T) world metres, camLoc (3,1), pose (72,T), shape (10,T), gender
<root>/SURREAL/data/cmu/{train,val,test}/run{0,1,2}/<seq>/<seq>_c%04d_segm.mat   v5: segm_1..segm_T (0 = background)

Camera (SURREAL's own code): K = [[600, 0, 160], [0, 600, 120], [0, 0, 1]], R = diag(1,-1,-1) A^T,
t = diag(1,-1,-1) (-A^T camLoc) with A = [[0,0,1],[0,-1,0],[-1,0,0]]; K (R X + t) reproduces
joints2D (the per-sample deviation is recorded). det R = -1: the renders are mirror images, so in
camera coordinates SMPL's left/right labels name the body's apparent right/left. The SMPL flip
permutation is applied before mapping to h36m17, making sides anatomically consistent with the
image (checked by the forward-direction test).
One clip = one work item; its video is decoded in order and every --stride-th frame kept.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import click
import numpy as np

from shards.camera import project
from shards.schema import SampleError

from .bodies import APPROXIMATED_H36M, H36M17_FLIP, SMPL_FLIP, body_crop, crop_sample, in_front, smpl24_to_h36m17
from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, check_array, convert_split, key_part
from .matlab import load_mat_v5
from .options import bad_parameter, checked_splits, comma_list, conversion_options, driver_kwargs, mesh_from_click_options, mesh_options
from .smpl import MeshJoints, mesh_from_options, mesh_manifest
from .video import video_frames

SPLITS = ("train", "val", "test")
FX = FY = 600.0
CX, CY = 160.0, 120.0
BLENDER_CAMERA = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])   # SURREAL's camera matrix_world rotation
BLENDER_TO_CV = np.diag([1.0, -1.0, -1.0])
GENDERS = {0: "female", 1: "male"}


def surreal_camera(cam_loc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera (R with det -1, t in metres) for a camera at `cam_loc`."""
    r = BLENDER_TO_CV @ BLENDER_CAMERA.T
    return r, BLENDER_TO_CV @ (-BLENDER_CAMERA.T @ np.asarray(cam_loc, np.float64).ravel())


def find_cmu_root(src_root: Path) -> Path:
    """Accept the folder holding SURREAL/, SURREAL/ itself, or data/cmu/."""
    for cand in (src_root / "SURREAL" / "data" / "cmu", src_root / "data" / "cmu", src_root / "cmu", src_root):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    raise ConversionError(f"no SURREAL/data/cmu/{{train,val,test}} under {src_root}")


def list_clips(cmu: Path, split: str, runs: list[str]) -> list[tuple]:
    items = []
    for run in runs:
        for video in sorted((cmu / split / run).glob("*/*_c[0-9][0-9][0-9][0-9].mp4")):
            items.append((split, run, video.parent.name, video.stem))
    return items


def info_array(info: dict, name: str, path: Path, key: str) -> np.ndarray:
    if name not in info:
        raise SampleError(f"_info.mat lacks {name!r}", file=str(path), sample=key)
    try:
        return np.asarray(info[name], np.float64)
    except (TypeError, ValueError) as e:
        raise SampleError(f"{name!r} is not numeric: {e}", file=str(path), sample=key) from None


def per_frame(a: np.ndarray, rows: int, name: str, path: Path, key: str) -> np.ndarray:
    """(rows, T) or (rows, 24, T) MATLAB arrays; MATLAB drops a trailing singleton T = 1."""
    if a.shape[0] != rows:
        raise SampleError(f"{name!r} has shape {a.shape}, expected ({rows}, ..., T)", file=str(path), sample=key)
    return a if a.ndim == (3 if name.startswith("joints") else 2) else a[..., None]


def make_samples(item, *, cmu: Path, stride: int, use_masks: bool, mesh, gender_mode: str, crop_size: int, context: float):
    split, run, seq, clip = item
    folder = cmu / split / run / seq
    video, info_path, segm_path = folder / f"{clip}.mp4", folder / f"{clip}_info.mat", folder / f"{clip}_segm.mat"
    clip_key = f"surreal_{split}_{run}_{key_part(clip)}"
    wanted = ["joints3D", "joints2D", "camLoc"] + (["pose", "shape", "gender"] if mesh is not None else [])
    info = load_mat_v5(info_path, "_info.mat", wanted, clip_key)
    j3 = per_frame(info_array(info, "joints3D", info_path, clip_key), 3, "joints3D", info_path, clip_key)
    j2 = per_frame(info_array(info, "joints2D", info_path, clip_key), 2, "joints2D", info_path, clip_key)
    if j3.shape[1] != 24 or j2.shape[1:] != j3.shape[1:]:
        raise SampleError(f"joints3D {j3.shape} and joints2D {j2.shape}: expected (3, 24, T) and (2, 24, T)",
                          file=str(info_path), sample=clip_key)
    cam_loc = check_array(info_array(info, "camLoc", info_path, clip_key).ravel(), (3,), "camLoc", info_path, clip_key)
    rot, trans = surreal_camera(cam_loc)
    n = j3.shape[2]
    frames = range(0, n, stride)
    if mesh is not None:
        pose = per_frame(info_array(info, "pose", info_path, clip_key), 72, "pose", info_path, clip_key)
        shape = per_frame(info_array(info, "shape", info_path, clip_key), 10, "shape", info_path, clip_key)
        gender = info_array(info, "gender", info_path, clip_key).ravel()
        if pose.shape[1] != n or shape.shape[1] != n or len(gender) not in (1, n):
            raise SampleError(f"pose {pose.shape}, shape {shape.shape}, gender {gender.shape} do not have T = {n} frames",
                              file=str(info_path), sample=clip_key)
    segm = None
    if use_masks and segm_path.exists():
        segm = load_mat_v5(segm_path, "_segm.mat", [f"segm_{f + 1}" for f in frames], clip_key)
    for f, image in video_frames(video, frames, clip_key):
        key = f"{clip_key}_{f:03d}"
        world = check_array(j3[:, :, f].T, (24, 3), f"joints3D frame {f}", info_path, key)
        cam_mm = 1000.0 * (world @ rot.T + trans)
        in_front(cam_mm, info_path, key)
        # K (R X + t) with SMPL's own labels against the released joints2D: checks the camera
        info_error = float(np.abs(project(cam_mm, (FX, FY, CX, CY)) - j2[:, :, f].T).max())
        extra = {}
        if mesh is None:
            joints = smpl24_to_h36m17(cam_mm[SMPL_FLIP])
        else:
            g = gender[0] if len(gender) == 1 else gender[f]
            body_gender = GENDERS.get(int(g)) if gender_mode == "gendered" else "neutral"
            if body_gender is None:
                raise SampleError(f"gender {g} is neither 0 (female) nor 1 (male)", file=str(info_path), sample=key)
            j17_world, fit_mm = mesh.h36m17(body_gender, pose[:, f], shape[:, f], world, info_path, key)
            joints = (1000.0 * (j17_world @ rot.T + trans))[H36M17_FLIP]
            extra = {"smpl_gender": body_gender, "smpl_fit_mm": round(fit_mm, 3)}
        uv = project(joints, (FX, FY, CX, CY))
        crop = body_crop(uv, crop_size, context)
        mask = None
        if segm is not None:
            name = f"segm_{f + 1}"
            if name not in segm:
                raise SampleError(f"_segm.mat lacks {name}", file=str(segm_path), sample=key)
            parts = np.asarray(segm[name])
            if parts.shape != image.shape[:2]:
                raise SampleError(f"{name} is {parts.shape[::-1]} but the video frame {image.shape[1::-1]}",
                                  file=str(segm_path), sample=key)
            mask = crop.mask(np.where(parts > 0, 255, 0).astype(np.uint8))
        yield crop_sample(
            crop, key, image, joints, uv, (FX, FY, CX, CY),
            mask=mask,
            meta={"dataset": "surreal", "split": split, "run": run, "source": str(video.relative_to(cmu)),
                  "annotation": str(info_path.relative_to(cmu)), "sequence": seq, "clip": clip, "frame": f,
                  "image_size": [image.shape[1], image.shape[0]], "joint_order": "h36m17", "root_index": 0,
                  "root_kind": "pelvis", "sides": "SMPL labels flipped (mirror camera)",
                  "joints2d_vs_info_px": round(info_error, 3),
                  "joint_mapping": "smpl24 subset" if mesh is None else "h36m regressor on the SMPL mesh",
                  "approximated_joints": APPROXIMATED_H36M if mesh is None else [], **extra, **crop.meta()},
        )


def check_runs(runs) -> list[str]:
    run_list = list(runs)
    bad = [r for r in run_list if not re.fullmatch(r"run\d+", r)]
    if bad:
        raise ValueError(f"unknown runs {bad}")
    return run_list


def check_stride(stride: int) -> int:
    if stride < 1:
        raise ValueError("must be at least 1")
    return stride


def convert(src_root: Path, out_dir: Path, split: str, *, runs=("run0", "run1", "run2"), stride: int = 10,
            masks: bool = True, smpl_models: Path | None = None, h36m_regressor: Path | None = None,
            regressor_order: str = "spin", smpl_gender: str = "gendered", max_fit_mm: float = 25.0,
            mesh: MeshJoints | None = None, crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT,
            **driver) -> dict | None:
    """One split ("train", "val", "test") of SURREAL's cmu clips under `src_root` (the folder
    holding SURREAL/, SURREAL/ itself, or data/cmu/) -> shards in `out_dir`; returns the manifest,
    or None when the split has no clips (nothing is written).

    Every `stride`-th frame of each clip in `runs`; `masks` from _segm.mat when present. The
    SMPL-24 -> h36m17 mapping as in pw3d.convert (`mesh`: mesh_from_options' result, to load the
    models once). `driver`: convert_split's options. ValueError for a bad option,
    ConversionError when there is no cmu folder."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    check_stride(stride)
    run_list = check_runs(runs)
    if mesh is None:
        mesh = mesh_from_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm)
    cmu = find_cmu_root(src_root)
    items = list_clips(cmu, split, run_list)
    if not items:
        return None
    make = functools.partial(make_samples, cmu=cmu, stride=stride, use_masks=masks, mesh=mesh,
                             gender_mode=smpl_gender, crop_size=crop_size, context=context)
    return convert_split(items, make, out_dir, desc=f"surreal/{split}",
                         manifest_extra={"dataset": "surreal", "split": split, "joint_order": "h36m17", "runs": run_list,
                                         "stride": stride, "clips": len(items),
                                         "camera": {"K": [[FX, 0, CX], [0, FY, CY], [0, 0, 1]],
                                                    "extrinsic": "R = diag(1,-1,-1) A^T, t = diag(1,-1,-1)(-A^T camLoc)",
                                                    "det_R": -1},
                                         "sides": "SMPL flip permutation applied before mapping (mirror camera)",
                                         "smpl_gender": smpl_gender if mesh else None,
                                         **mesh_manifest(mesh, smpl_models, h36m_regressor, regressor_order),
                                         "masks": "_segm.mat > 0 when present" if masks else "off",
                                         "crop_size": crop_size, "context": context},
                         **driver)


@click.command("surreal")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,val,test", show_default=True, help="comma list of train, val, test")
@click.option("--runs", default="run0,run1,run2", show_default=True, help="comma list of run folders")
@click.option("--stride", type=int, default=10, show_default=True, help="keep every Nth frame of each clip (from frame 0)")
@click.option("--masks/--no-masks", default=True, show_default=True, help="foreground = _segm.mat part labels > 0, when present")
@mesh_options
@conversion_options
def cli(src_root, out_dir, splits, runs, stride, masks, smpl_models, h36m_regressor, regressor_order, smpl_gender,
        max_fit_mm, crop_size, context, **kw):
    """SURREAL (cmu clips: mp4 + _info.mat + _segm.mat) -> OUT_DIR/{train,val,test}/ shards.

    h36m17 in camera-frame millimetres with sides relabelled for the mirrored camera; masks from
    the part segmentation; SMPL-24 subset mapping by default, or an H36M regressor on the mesh."""
    with bad_parameter("--stride"):
        check_stride(stride)
    with bad_parameter("--runs"):
        run_list = check_runs(comma_list(runs))
    mesh = mesh_from_click_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm)
    cmu = find_cmu_root(src_root)
    for split in checked_splits(splits, SPLITS):
        m = convert(src_root, out_dir / split, split, runs=run_list, stride=stride, masks=masks, smpl_models=smpl_models,
                    h36m_regressor=h36m_regressor, regressor_order=regressor_order, smpl_gender=smpl_gender,
                    max_fit_mm=max_fit_mm, mesh=mesh, crop_size=crop_size, context=context, **driver_kwargs(**kw))
        if m is None:
            click.echo(f"surreal/{split}: no clips under {cmu / split}, nothing written", err=True)
            continue
        click.echo(f"surreal/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

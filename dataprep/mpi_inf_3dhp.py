"""MPI-INF-3DHP -> shards (h36m17, camera-frame millimetres). A target domain.

Training set:
<root>/S{1..8}/Seq{1,2}/annot.mat                   MATLAB v5: annot2, annot3 (camera mm), univ_annot3: cells
                                                    of 14 cameras x (F, 28*k); `cameras`, `frames`
<root>/S{1..8}/Seq{1,2}/camera.calibration          per camera: name, sensor, size, animated, intrinsic (4x4
                                                    row-major), extrinsic, radial
<root>/S{1..8}/Seq{1,2}/imageSequence/video_{c}.avi 2048x2048
<root>/S{1..8}/Seq{1,2}/FGmasks/video_{c}.avi       foreground masks (R channel) where available
Test set:
<root>/mpi_inf_3dhp_test_set/TS{1..6}/annot_data.mat  MATLAB v7.3: annot2 (N,1,17,2), annot3 / univ_annot3
                                                    (N,1,17,3) mm, valid_frame (N,1)
<root>/mpi_inf_3dhp_test_set/TS{1..6}/imageSequence/img_%06d.jpg   1-based

Only annotation rows the video has frames for are used; test frames only where valid_frame. The
test set ships no intrinsics: they are fitted per sequence by least squares from annot2 and the
chosen 3D annotation (as public code does), and recorded with their residual. joints2d is always
the pinhole projection of the stored 3D joints. Training videos are decoded in order, one chunk
of frames per work item.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable

import click
import numpy as np

from shards.camera import project
from shards.schema import SampleError

from .bodies import body_crop, crop_sample, in_front
from .fitting import fit_intrinsics
from .matlab import load_mat_v5, mat73_dataset, open_mat73
from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, check_array, convert_split, load_rgb, warn_on_stderr
from .options import bad_parameter, comma_list, conversion_options, driver_kwargs, echo_warning
from .video import video_frames

# h36m17[j] = mpi28[MPI28_TO_H36M17[j]] (28: spine3, spine4, spine2, spine, pelvis, neck, head, head_top,
# left clavicle, shoulder, elbow, wrist, hand, right ..., left hip, knee, ankle, foot, toe, right ...)
MPI28_TO_H36M17 = np.array([4, 23, 24, 25, 18, 19, 20, 3, 5, 6, 7, 9, 10, 11, 14, 15, 16])
# h36m17[j] = test17[TEST17_TO_H36M17[j]] (test 17: head_top, neck, r_shoulder, r_elbow, r_wrist, l_shoulder,
# l_elbow, l_wrist, r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, pelvis, spine, head)
TEST17_TO_H36M17 = np.array([14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4])
TRAIN_SUBJECTS = tuple(f"S{i}" for i in range(1, 9))
TRAIN_CAMERAS = (0, 1, 2, 4, 5, 6, 7, 8)        # the chest-height and lower views used in practice
TEST_SEQUENCES = tuple(f"TS{i}" for i in range(1, 7))
ANNOT3_KEYS = ("annot3", "univ_annot3")


# -- training set ------------------------------------------------------------------------------
def read_calibration(path: Path) -> dict[int, tuple[float, float, float, float]]:
    """camera.calibration -> {camera: (fx, fy, cx, cy)} from each `intrinsic` 4x4 (row-major)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SampleError("camera.calibration missing", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SampleError(f"unreadable camera.calibration: {e}", file=str(path)) from None
    cams, current = {}, None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "name" and len(parts) == 2:
            try:
                current = int(parts[1])
            except ValueError:
                raise SampleError(f"camera name {parts[1]!r} is not a number", file=str(path)) from None
        elif parts[0] == "intrinsic" and current is not None:
            try:
                m = np.array([float(v) for v in parts[1:]]).reshape(4, 4)
            except ValueError:
                raise SampleError(f"camera {current} intrinsic is not 16 numbers", file=str(path)) from None
            if not np.all(np.isfinite(m)) or m[0, 0] <= 0 or m[1, 1] <= 0:
                raise SampleError(f"camera {current} intrinsic {m[:2, :3].tolist()} is not a camera", file=str(path))
            cams[current] = (m[0, 0], m[1, 1], m[0, 2], m[1, 2])
    if not cams:
        raise SampleError("no camera with an intrinsic line", file=str(path))
    return cams


def load_train_sequence(seq_dir: Path, cameras: list[int], annot3_key: str) -> dict[int, np.ndarray]:
    """annot.mat -> {camera: (F, 17, 3) float32 h36m17 camera mm} for the wanted cameras."""
    path = seq_dir / "annot.mat"
    mat = load_mat_v5(path, "annot.mat", [annot3_key, "cameras"])
    if annot3_key not in mat:
        raise SampleError(f"annot.mat lacks {annot3_key!r}", file=str(path))
    cells = mat[annot3_key].ravel()
    ids = [int(c) for c in mat["cameras"].ravel()] if "cameras" in mat else list(range(len(cells)))
    if len(ids) != len(cells):
        raise SampleError(f"{annot3_key} has {len(cells)} cells but cameras lists {len(ids)}", file=str(path))
    out = {}
    for cam in cameras:
        if cam not in ids:
            raise SampleError(f"camera {cam} not in annot.mat (cameras {ids})", file=str(path))
        a = np.asarray(cells[ids.index(cam)])
        if a.ndim != 2 or a.shape[1] != 28 * 3 or a.dtype == object:
            raise SampleError(f"{annot3_key} of camera {cam} has shape {a.shape}, expected (F, 84) = 28 joints x 3",
                              file=str(path))
        out[cam] = a.astype(np.float64).reshape(-1, 28, 3)[:, MPI28_TO_H36M17].astype(np.float32)
    return out


def make_samples_train(item, *, root: Path, stride: int, annots: dict, calib: dict, annot3_key: str,
                       use_masks: bool, crop_size: int, context: float):
    subject, seq, cam, first, stop = item
    seq_dir = root / subject / seq
    joints_all = annots[(subject, seq)][cam]
    fx, fy, cx, cy = calib[(subject, seq)][cam]
    seq_key = f"mpi3dhp_train_{subject}_{seq}_c{cam}"
    video = seq_dir / "imageSequence" / f"video_{cam}.avi"
    mask_video = seq_dir / "FGmasks" / f"video_{cam}.avi"
    frames = range(first, stop, stride)
    masks = video_frames(mask_video, frames, seq_key, allow_short=True) if use_masks and mask_video.exists() else None
    for f, image in video_frames(video, frames, seq_key, allow_short=True):
        key = f"{seq_key}_{f:06d}"
        joints = check_array(joints_all[f], (17, 3), f"{annot3_key} camera {cam} row {f}", seq_dir / "annot.mat", key)
        in_front(joints, seq_dir / "annot.mat", key)
        uv = project(joints, (fx, fy, cx, cy))
        crop = body_crop(uv, crop_size, context)
        mask = None
        if masks is not None:
            mf, m = next(masks, (None, None))
            if mf != f:
                raise SampleError(f"mask video has no frame {f}", file=str(mask_video), sample=key)
            if m.shape[:2] != image.shape[:2]:
                raise SampleError(f"mask frame is {m.shape[1::-1]}, video frame {image.shape[1::-1]}",
                                  file=str(mask_video), sample=key)
            mask = crop.mask(np.where(m[:, :, 0] >= 128, 255, 0).astype(np.uint8))
        yield crop_sample(
            crop, key, image, joints, uv, (fx, fy, cx, cy),
            mask=mask,
            meta={"dataset": "mpi_inf_3dhp", "split": "train", "source": str(video.relative_to(root)),
                  "annotation": str((seq_dir / "annot.mat").relative_to(root)), "subject": subject, "sequence": seq,
                  "camera": cam, "frame": f, "image_size": [image.shape[1], image.shape[0]], "annot3": annot3_key,
                  "joint_order": "h36m17", "root_index": 0, "root_kind": "pelvis", **crop.meta()},
        )


# -- test set ----------------------------------------------------------------------------------
def testset_root(src_root: Path) -> Path:
    inner = src_root / "mpi_inf_3dhp_test_set"
    return inner if inner.is_dir() else src_root


def load_testset_sequence(ts_dir: Path, annot3_key: str) -> dict:
    """annot_data.mat -> h36m17 joints (N, 17, 3) mm, valid rows, fitted intrinsics and residual."""
    path = ts_dir / "annot_data.mat"
    with open_mat73(path, "annot_data.mat") as f:
        a3 = mat73_dataset(f, annot3_key, "annot_data.mat").astype(np.float64)
        a2 = mat73_dataset(f, "annot2", "annot_data.mat").astype(np.float64)
        valid = mat73_dataset(f, "valid_frame", "annot_data.mat").ravel() > 0.5
    n = len(valid)
    if a3.shape != (n, 1, 17, 3) or a2.shape != (n, 1, 17, 2):
        raise SampleError(f"{annot3_key} {a3.shape} and annot2 {a2.shape}: expected ({n}, 1, 17, 3) and ({n}, 1, 17, 2) "
                          f"for {n} valid_frame entries", file=str(path))
    j3, j2 = a3[:, 0][:, TEST17_TO_H36M17], a2[:, 0][:, TEST17_TO_H36M17]
    rows = np.nonzero(valid)[0]
    if len(rows) == 0:
        raise SampleError("no valid frames", file=str(path))
    good = np.all(np.isfinite(j3[rows]), axis=(1, 2)) & np.all(np.isfinite(j2[rows]), axis=(1, 2)) & np.all(j3[rows, :, 2] > 0, axis=1)
    if not good.any():
        raise SampleError("no valid frame has finite joints in front of the camera to fit intrinsics", file=str(path))
    k, residual = fit_intrinsics(j2[rows[good]], j3[rows[good]])
    return {"joints": j3.astype(np.float32), "rows": rows, "K": k, "residual_px": residual}


def make_samples_testset(item, *, root: Path, sequences: dict, annot3_key: str, crop_size: int, context: float):
    ts, row = item
    seq = sequences[ts]
    key = f"mpi3dhp_test_{ts}_{row:06d}"
    anno = root / ts / "annot_data.mat"
    image_path = root / ts / "imageSequence" / f"img_{row + 1:06d}.jpg"
    joints = check_array(seq["joints"][row], (17, 3), f"{annot3_key} row {row}", anno, key)
    in_front(joints, anno, key)
    fx, fy, cx, cy = seq["K"]
    uv = project(joints, (fx, fy, cx, cy))
    image = load_rgb(image_path, key)
    crop = body_crop(uv, crop_size, context)
    yield crop_sample(
        crop, key, image, joints, uv, (fx, fy, cx, cy),
        meta={"dataset": "mpi_inf_3dhp", "split": "test", "source": str(image_path.relative_to(root)),
              "annotation": str(anno.relative_to(root)), "sequence": ts, "frame": row,
              "image_size": [image.shape[1], image.shape[0]], "annot3": annot3_key, "intrinsics_fit_residual_px":
              round(seq["residual_px"], 4), "joint_order": "h36m17", "root_index": 0, "root_kind": "pelvis", **crop.meta()},
    )


def check_strides(train_stride: int, frames_per_item: int) -> None:
    if train_stride < 1 or frames_per_item < 1:
        raise ValueError("--train-stride and --frames-per-item must be at least 1")


def train_work(src_root: Path, subjects, cameras: list[int], train_stride: int, frames_per_item: int,
               annot3_key: str) -> tuple[dict, dict, list, list]:
    """The training sequences of `subjects`: annotations, calibrations, work items (one chunk of
    frames_per_item kept frames of one camera's video each) and the sequence names."""
    annots, calib, items, seqs = {}, {}, [], []
    for subject in subjects:
        for seq_dir in sorted(p for p in (src_root / subject).glob("Seq*") if re.fullmatch(r"Seq\d+", p.name)):
            calib_seq = read_calibration(seq_dir / "camera.calibration")
            missing = [c for c in cameras if c not in calib_seq]
            if missing:
                raise SampleError(f"cameras {missing} not in the calibration", file=str(seq_dir / "camera.calibration"))
            annots[(subject, seq_dir.name)] = load_train_sequence(seq_dir, cameras, annot3_key)
            calib[(subject, seq_dir.name)] = calib_seq
            seqs.append(f"{subject}/{seq_dir.name}")
            span = train_stride * frames_per_item
            for cam in cameras:
                n = len(annots[(subject, seq_dir.name)][cam])
                items += [(subject, seq_dir.name, cam, first, min(first + span, n)) for first in range(0, n, span)]
    return annots, calib, items, seqs


def convert(src_root: Path, out_dir: Path, split: str, *, subjects=TRAIN_SUBJECTS, cameras=TRAIN_CAMERAS,
            train_stride: int = 10, frames_per_item: int = 16, test_sequences=TEST_SEQUENCES,
            annot3_key: str = "annot3", masks: bool = True, crop_size: int = DEFAULT_CROP_SIZE,
            context: float = DEFAULT_CONTEXT, warn: Callable[[str], None] = warn_on_stderr, **driver) -> dict | None:
    """One split of MPI-INF-3DHP at `src_root` -> shards in `out_dir`; returns the manifest, or None
    when the split has nothing to convert (nothing is written).

    "train": every `train_stride`-th video frame of `subjects` x `cameras` (ints), FGmasks crops
    with `masks`. "test": the valid frames of `test_sequences` (one not found is passed to
    `warn`), intrinsics fitted per sequence. `annot3_key`: annot3 or univ_annot3. `driver`:
    convert_split's options. ValueError for a bad option, SampleError for an unreadable file."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    if annot3_key not in ANNOT3_KEYS:
        raise ValueError(f"unknown annot3 key {annot3_key!r}; choose from {ANNOT3_KEYS}")
    check_strides(train_stride, frames_per_item)
    if split == "train":
        cameras = [int(c) for c in cameras]
        annots, calib, items, seqs = train_work(src_root, subjects, cameras, train_stride, frames_per_item, annot3_key)
        if not items:
            return None
        make = functools.partial(make_samples_train, root=src_root, stride=train_stride, annots=annots, calib=calib,
                                 annot3_key=annot3_key, use_masks=masks, crop_size=crop_size, context=context)
        extra = {"sequences": seqs, "cameras": cameras, "stride": train_stride, "frames_per_item": frames_per_item,
                 "joint_map": f"mpi28 -> h36m17 {MPI28_TO_H36M17.tolist()}", "intrinsics": "camera.calibration",
                 "masks": "FGmasks R channel >= 128 when present" if masks else "off"}
    else:
        root = testset_root(src_root)
        sequences, items = {}, []
        for ts in test_sequences:
            if not (root / ts / "annot_data.mat").exists():
                warn(f"mpi_inf_3dhp/test: warning: {root / ts / 'annot_data.mat'} not found")
                continue
            sequences[ts] = load_testset_sequence(root / ts, annot3_key)
            items += [(ts, int(r)) for r in sequences[ts]["rows"]]
        if not items:
            return None
        make = functools.partial(make_samples_testset, root=root, sequences=sequences, annot3_key=annot3_key,
                                 crop_size=crop_size, context=context)
        extra = {"sequences": sorted(sequences), "joint_map": f"test17 -> h36m17 {TEST17_TO_H36M17.tolist()}",
                 "frames": "valid_frame only", "masks": "none in the test set",
                 "intrinsics": "least squares fit of annot2 to the 3D annotation per sequence",
                 "fitted_intrinsics": {ts: {"fx_fy_cx_cy": np.round(s["K"], 4).tolist(),
                                            "max_residual_px": round(s["residual_px"], 4)} for ts, s in sequences.items()}}
    return convert_split(items, make, out_dir, desc=f"mpi_inf_3dhp/{split}",
                         manifest_extra={"dataset": "mpi_inf_3dhp", "split": split, "joint_order": "h36m17",
                                         "annot3": annot3_key, "joints2d": f"pinhole projection of {annot3_key}",
                                         "crop_size": crop_size, "context": context, **extra},
                         **driver)


@click.command("mpi_inf_3dhp")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True, help="comma list of train (S1-S8), test (TS1-TS6)")
@click.option("--subjects", default=",".join(TRAIN_SUBJECTS), show_default=True, help="training subjects")
@click.option("--cameras", default=",".join(map(str, TRAIN_CAMERAS)), show_default=True, help="training cameras (0-13)")
@click.option("--train-stride", type=int, default=10, show_default=True, help="keep every Nth training video frame")
@click.option("--frames-per-item", type=int, default=16, show_default=True,
              help="training: kept frames per work item (one video chunk decoded in order)")
@click.option("--test-sequences", default=",".join(TEST_SEQUENCES), show_default=True)
@click.option("--annot3", "annot3_key", type=click.Choice(ANNOT3_KEYS), default="annot3", show_default=True,
              help="3D ground truth: annot3 (camera mm, consistent with the images) or univ_annot3 (rescaled to a "
                   "universal skeleton; published numbers differ by this choice)")
@click.option("--masks/--no-masks", default=True, show_default=True, help="training: crop FGmasks videos when present")
@conversion_options
def cli(src_root, out_dir, splits, subjects, cameras, train_stride, frames_per_item, test_sequences, annot3_key, masks,
        crop_size, context, **kw):
    """MPI-INF-3DHP (training videos + test set) -> OUT_DIR/{train,test}/ shards.

    h36m17 in camera-frame millimetres; training foreground masks from FGmasks when present;
    test frames where valid_frame, with intrinsics fitted from annot2/annot3."""
    try:
        wanted_cams = [int(c) for c in comma_list(cameras)]
    except ValueError:
        raise click.BadParameter(f"{cameras!r} is not a comma list of numbers", param_hint="--cameras") from None
    with bad_parameter(None):
        check_strides(train_stride, frames_per_item)
    for split in comma_list(splits):
        if split not in ("train", "test"):
            raise click.BadParameter(f"unknown split {split!r}", param_hint="--splits")
        m = convert(src_root, out_dir / split, split, subjects=comma_list(subjects), cameras=wanted_cams,
                    train_stride=train_stride, frames_per_item=frames_per_item,
                    test_sequences=comma_list(test_sequences), annot3_key=annot3_key, masks=masks,
                    crop_size=crop_size, context=context, warn=echo_warning, **driver_kwargs(**kw))
        if m is None:
            where = f"no S*/Seq*/annot.mat under {src_root}" if split == "train" else \
                f"no valid test frames under {testset_root(src_root)}"
            click.echo(f"mpi_inf_3dhp/{split}: {where}, nothing written", err=True)
            continue
        click.echo(f"mpi_inf_3dhp/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

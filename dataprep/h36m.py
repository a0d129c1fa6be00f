"""Human3.6M -> shards (h36m17, camera-frame millimetres). The source domain for bodies.

Original release (per subject, as the dataset's archives unpack):
<root>/S1/MyPoseFeatures/D3_Positions_mono/<Action>.<camid>.cdf   CDF `Pose` (1, N, 96): 32 joints, camera mm
<root>/S1/MyPoseFeatures/D2_Positions/<Action>.<camid>.cdf        (1, N, 64) px, lens-distorted (optional)
<root>/S1/Videos/<Action>.<camid>.mp4                             50 fps, may run longer than the CDF
<root>/S1/MySegmentsMat/ground_truth_bs/<Action>.<camid>.mat      MATLAB v7.3: `Masks` object refs, one per frame (optional)
<root>/metadata.xml                                               from the code bundle (optional; cameras, names)

Extracted frames (anibali/h36m-fetch's process_all.py):
<root>/processed/<S>/<ActionName>-<subaction>/annot.h5            pose/3d (n, 32, 3) camera mm, frame (1-based),
                                                                  camera, intrinsics/<camid> (fitted to D2)
<root>/processed/<S>/<ActionName>-<subaction>/imageSequence/<camid>/img_%06d.jpg

Cameras: the public per-camera constants (metadata.xml's `w0`, 9 numbers per camera from index
264: fx, fy, cx, cy, k1, k2, k3, p1, p2; built in below, or read from metadata.xml). The released
D2_Positions are the lens-distorted projection of D3_Positions_mono (the dataset's own
radial-tangential model, see `Camera.distort`), up to 2.4 px from the pinhole projection near
the image centre and more at the border. By default (--undistort) crops are resampled through
that model (dataprep.lens), so the crop camera is the exact pinhole part of the constants and
joints2d = its projection of the 3D joints lies on the image content; masks go the same way.
Per sample, d2_undistorted_vs_pinhole_px records how far the undistorted D2 lies from the
pinhole projection (0 up to rounding when the model and cameras are right). --no-undistort keeps
the old crops (distortion left in; d2_vs_pinhole_px recorded instead).
Video frames are decoded in order, one chunk of frames per work item (--frames-per-item).

Sequences are named the same in both layouts: metadata.xml's action name and subaction number,
`Directions-1`, in keys and in meta (`sequence`, `action`, `subaction`; the release's own file or
folder name is kept as `release_name`). See RELEASE_FILES.
"""
from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cdflib
import click
import h5py
import numpy as np

from shards.camera import project
from shards.schema import SampleError

from .bodies import body_crop, crop_sample, in_front
from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, check_array, convert_split, key_part, load_rgb, warn_on_stderr
from .matlab import mat73_dataset, open_mat73
from .options import bad_parameter, comma_list, conversion_options, driver_kwargs, echo_warning
from .lens import undistort_points, undistorted_mask
from .video import video_frames

TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
# h36m17[j] = h36m32[H36M32_TO_H36M17[j]]
H36M32_TO_H36M17 = np.array([0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27])
# metadata.xml w0[264 + 9c : 264 + 9c + 9]: fx, fy, cx, cy, then k1, k2, k3 and the two tangential
# coefficients (stored here as metadata.xml orders them; only the pinhole part is used).
CAMERA_CONSTANTS = {
    "54138969": (1145.04940458804, 1143.78109572365, 512.541504956548, 515.4514869776, -0.207098910824901,
                 0.247775183068982, -0.00307515035078854, -0.00142447157470321, -0.000975698859470499),
    "55011271": (1149.67569986785, 1147.59161666764, 508.848621645943, 508.064917088557, -0.194213629607385,
                 0.240408539138292, 0.00681997559022603, -0.0027408943961907, -0.001619026613787),
    "58860488": (1149.14071676148, 1148.7989685676, 519.815837182153, 501.402658888552, -0.208338188251856,
                 0.255488007488945, -0.00246049749891915, -0.000759999321030303, 0.00148438698385668),
    "60457274": (1145.51133842318, 1144.77392807652, 514.968197319863, 501.882018537695, -0.198384093827848,
                 0.218323676298049, -0.00894780704152122, -0.00181336200488089, -0.000587205583421232),
}
CAMERA_IDS = tuple(CAMERA_CONSTANTS)
W0_INTRINSICS_AT = 264          # 11 subjects x 4 cameras x 6 extrinsic numbers come first
# S11's Directions video from camera 54138969 is corrupt in the release (public code drops it).
DEFAULT_EXCLUDE = "S11/Directions.54138969"
D3_DIR = "MyPoseFeatures/D3_Positions_mono"
D2_DIR = "MyPoseFeatures/D2_Positions"
MASK_DIR = "MySegmentsMat/ground_truth_bs"
DEFAULT_STRIDES = {"original": {"train": 5, "test": 64}, "extracted": {"train": 1, "test": 1}}


@dataclass(frozen=True)
class Camera:
    id: str
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple   # k1, k2, k3, p1, p2 (metadata.xml order)

    def manifest(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "distortion_k1_k2_k3_p1_p2": list(self.distortion)}

    def distort(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ideal pinhole pixels -> where the lens imaged them, and whether the model is one-to-one
        there. Human3.6M's own model (its ProjectPointRadial; Martinez et al.'s
        project_point_radial), which is not OpenCV's: the tangential part is
        x (p1 y + p2 x) + p2 r^2 for x and y (p1 y + p2 x) + p1 r^2 for y."""
        k1, k2, k3, p1, p2 = self.distortion
        x, y = (uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        tan = p1 * y + p2 * x
        xd, yd = x * (radial + tan) + p2 * r2, y * (radial + tan) + p1 * r2
        # beyond the radius where r * radial(r) stops growing the model folds back
        ok = 1 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3)) > 0
        return np.stack([self.fx * xd + self.cx, self.fy * yd + self.cy], axis=-1), ok


def cameras_from_constants() -> dict[str, Camera]:
    return {cid: Camera(cid, *v[:4], tuple(v[4:])) for cid, v in CAMERA_CONSTANTS.items()}


def cameras_from_metadata(path: Path) -> dict[str, Camera]:
    """The four cameras' intrinsics from metadata.xml (`dbcameras/index2id` and `w0`)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise SampleError("metadata.xml missing", file=str(path)) from None
    except ET.ParseError as e:
        raise SampleError(f"malformed metadata.xml: {e}", file=str(path)) from None
    ids = [e.text.strip() for e in root.findall("dbcameras/index2id/item") if e.text]
    w0 = root.find("w0")
    if not ids or w0 is None or not w0.text:
        raise SampleError("metadata.xml lacks dbcameras/index2id or w0", file=str(path))
    try:
        values = [float(v) for v in w0.text.strip().strip("[]").split()]
    except ValueError as e:
        raise SampleError(f"metadata.xml w0 is not numeric: {e}", file=str(path)) from None
    need = W0_INTRINSICS_AT + 9 * len(ids)
    if len(values) < need:
        raise SampleError(f"metadata.xml w0 has {len(values)} numbers, expected {need}", file=str(path))
    cams = {}
    for c, cid in enumerate(ids):
        v = values[W0_INTRINSICS_AT + 9 * c: W0_INTRINSICS_AT + 9 * (c + 1)]
        cams[cid] = Camera(cid, *v[:4], tuple(v[4:]))
    return cams


# -- sequence names ---------------------------------------------------------------------------
# One name per recording in keys and meta: metadata.xml's action name and subaction number, the
# names h36m-fetch's folders carry (`Directions-1`). The original release names its files
# differently per subject ("WalkDog 1" or "WalkingDog 1", "Photo" or "TakingPhoto"), and the
# number in a file name is not the subaction: S11's "Directions" is subaction 2, S5's
# "Directions 2" too. metadata.xml's <mapping> table says which file is which; it is read from
# metadata.xml when given, else from this copy of it (subaction 1 | subaction 2 per action).
ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases", "Sitting",
           "SittingDown", "Smoking", "TakingPhoto", "Waiting", "Walking", "WalkingDog", "WalkingTogether")
RELEASE_FILES = {
    "S1": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 2|Eating", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting 2",
           "SittingDown 2|SittingDown", "Smoking 1|Smoking", "TakingPhoto 1|TakingPhoto", "Waiting 1|Waiting",
           "Walking 1|Walking", "WalkingDog 1|WalkingDog", "WalkTogether 1|WalkTogether"),
    "S2": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating 2", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown 2|SittingDown 3", "Smoking 1|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S3": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating 2", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing 2", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown 1|SittingDown", "Smoking 1|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
           "Walking 1|Walking 2", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S4": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown 1|SittingDown 2", "Smoking 1|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 2|WalkTogether 3"),
    "S5": ("Directions 1|Directions 2", "Discussion 2|Discussion 3", "Eating 1|Eating", "Greeting 1|Greeting 2",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown|SittingDown 1", "Smoking 1|Smoking", "Photo|Photo 2", "Waiting 1|Waiting 2",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S6": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating 2", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 2|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting 2",
           "SittingDown 1|SittingDown", "Smoking 1|Smoking", "Photo|Photo 1", "Waiting 3|Waiting",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S7": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating", "Greeting 1|Greeting",
           "Phoning 2|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown|SittingDown 1", "Smoking 1|Smoking", "Photo|Photo 1", "Waiting 1|Waiting 2",
           "Walking 1|Walking 2", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S8": ("Directions 1|Directions", "Discussion 1|Discussion", "Eating 1|Eating", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown|SittingDown 1", "Smoking 1|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether 2"),
    "S9": ("Directions 1|Directions", "Discussion 1|Discussion 2", "Eating 1|Eating", "Greeting 1|Greeting",
           "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
           "SittingDown|SittingDown 1", "Smoking 1|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
           "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S10": ("Directions 1|Directions", "Discussion 1|Discussion 2", "Eating 1|Eating", "Greeting 1|Greeting",
            "Phoning 1|Phoning", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
            "SittingDown|SittingDown 1", "Smoking 2|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
            "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
    "S11": ("Directions 1|Directions", "Discussion 1|Discussion 2", "Eating 1|Eating", "Greeting 2|Greeting",
            "Phoning 3|Phoning 2", "Posing 1|Posing", "Purchases 1|Purchases", "Sitting 1|Sitting",
            "SittingDown|SittingDown 1", "Smoking 2|Smoking", "Photo 1|Photo", "Waiting 1|Waiting",
            "Walking 1|Walking", "WalkDog 1|WalkDog", "WalkTogether 1|WalkTogether"),
}
# Spellings of action names seen in folder names (older h36m-fetch, other tools) -> metadata.xml's
ACTION_ALIASES = {"Photo": "TakingPhoto", "WalkDog": "WalkingDog", "WalkTogether": "WalkingTogether"}


def builtin_sequences() -> dict[str, dict[str, tuple[str, int]]]:
    """{subject: {release file name: (action, subaction)}} from RELEASE_FILES."""
    return {subject: {name: (action, sub + 1) for action, pair in zip(ACTIONS, files)
                      for sub, name in enumerate(pair.split("|"))}
            for subject, files in RELEASE_FILES.items()}


def sequences_from_metadata(path: Path) -> dict[str, dict[str, tuple[str, int]]] | None:
    """The same table from metadata.xml's <mapping> (rows: action id, subaction id, one file name
    per subject; the first row names the subjects) and <actionnames>; None if it has neither."""
    try:
        root = ET.parse(path).getroot()
    except (FileNotFoundError, ET.ParseError) as e:
        raise SampleError(f"unreadable metadata.xml: {e}", file=str(path)) from None
    mapping, names = root.find("mapping"), root.find("actionnames")
    if mapping is None or names is None:
        return None
    actions = [(e.text or "").strip() for e in names]
    rows = [[(td.text or "").strip() for td in tr] for tr in mapping]
    if not rows or len(rows[0]) < 3:
        raise SampleError("metadata.xml <mapping> has no subject header row", file=str(path))
    subjects = rows[0][2:]
    table = {s: {} for s in subjects}
    for row in rows[1:]:
        try:
            action_id, sub_id = int(row[0]), int(row[1])
            action = actions[action_id - 1]
        except (ValueError, IndexError):
            raise SampleError(f"metadata.xml <mapping> row {row[:2]} does not name an action", file=str(path)) from None
        if action.startswith("_"):
            continue        # _ALL: the concatenation of all sequences, not a recording
        for subject, name in zip(subjects, row[2:]):
            table[subject][name] = (ACTION_ALIASES.get(action, action), sub_id)
    return table


def canonical_sequence(action: str, subaction: int | None) -> str:
    return action if subaction is None else f"{action}-{subaction}"


def parse_fetch_folder(name: str) -> tuple[str, int | None]:
    """h36m-fetch folder `<Action>-<subaction>` -> (metadata.xml action name, subaction); a
    folder without the number (older h36m-fetch) keeps only the action."""
    m = re.fullmatch(r"(.+)-(\d+)", name)
    action, sub = (m.group(1), int(m.group(2))) if m else (name, None)
    return ACTION_ALIASES.get(action, action), sub


# -- CDF poses ---------------------------------------------------------------------------------
def cdf_num_frames(path: Path, width: int) -> int:
    """Frames in a Pose CDF without reading the data."""
    try:
        info = cdflib.CDF(str(path)).varinq("Pose")
    except FileNotFoundError:
        raise SampleError("pose file missing", file=str(path)) from None
    except (OSError, ValueError, KeyError) as e:
        raise SampleError(f"unreadable pose CDF: {e}", file=str(path)) from None
    dims = list(info.Dim_Sizes)
    if not dims or dims[-1] != width:
        dim = 3 if width == 96 else 2
        raise SampleError(f"CDF variable Pose has dimensions {dims}, expected [N, {width}] (32 joints x {dim})", file=str(path))
    return int(np.prod(dims[:-1])) * (info.Last_Rec + 1)


def read_pose_cdf(path: Path, width: int, sample: str | None) -> np.ndarray:
    """CDF `Pose` (1, N, width) -> (N, width // dim, dim) float64 (dim = 3 for 3D, 2 for 2D)."""
    try:
        pose = np.asarray(cdflib.CDF(str(path)).varget("Pose"), np.float64)
    except FileNotFoundError:
        raise SampleError("pose file missing", file=str(path), sample=sample) from None
    except (OSError, ValueError, KeyError) as e:
        raise SampleError(f"unreadable pose CDF: {e}", file=str(path), sample=sample) from None
    if pose.shape[-1] != width:
        raise SampleError(f"CDF variable Pose has shape {pose.shape}, expected (1, N, {width})", file=str(path), sample=sample)
    dim = 3 if width == 96 else 2
    return pose.reshape(-1, 32, dim)


# -- lens ----------------------------------------------------------------------------------------
INTRINSICS_MODEL = {True: "pinhole part of the camera; crops undistorted with its k1-k3, p1-p2",
                    False: "pinhole part of the camera; lens distortion left in the crops"}


def d2_check(d2: np.ndarray, uv: np.ndarray, distort) -> dict:
    """How far the released D2 (distorted) labels lie from our pinhole projection `uv`: after
    undistorting them when the crops are undistorted, as they are otherwise."""
    if distort is None:
        return {"d2_vs_pinhole_px": round(float(np.abs(d2 - uv).max()), 3)}
    return {"d2_undistorted_vs_pinhole_px": round(float(np.abs(undistort_points(d2, distort) - uv).max()), 4)}


# -- original release --------------------------------------------------------------------------
def original_items(root: Path, subjects: list[str], cameras: list[str], exclude: set[str], stride: int,
                   frames_per_item: int, sequences: dict) -> tuple[list, list]:
    """Work items (subject, release file name, action, subaction, camera, first frame, stop) of
    `frames_per_item` kept frames each, and the sequences used. `sequences` names each release
    file (builtin_sequences / sequences_from_metadata)."""
    items, used = [], []
    for subject in subjects:
        for cdf in sorted((root / subject / D3_DIR).glob("*.cdf")):
            base, _, cam = cdf.stem.rpartition(".")
            if base.startswith("_ALL") or cam not in cameras or f"{subject}/{base}.{cam}" in exclude:
                continue
            if base not in sequences.get(subject, {}):
                raise SampleError(f"{subject} has no recording named {base!r} in metadata.xml's mapping "
                                  f"(known: {sorted(sequences.get(subject, {}))})", file=str(cdf))
            action, sub = sequences[subject][base]
            n = cdf_num_frames(cdf, 96)
            used.append(f"{subject}/{base}.{cam}")
            span = stride * frames_per_item
            items += [(subject, base, action, sub, cam, first, min(first + span, n)) for first in range(0, n, span)]
    return items, used


def make_samples_original(item, *, root: Path, split: str, stride: int, cameras: dict, use_masks: bool,
                          crop_size: int, context: float, undistort: bool = True):
    subject, base, action, sub, cam_id, first, stop = item
    cam: Camera = cameras[cam_id]
    sequence = canonical_sequence(action, sub)
    seq_key = f"h36m_{split}_{subject}_{key_part(sequence)}_{cam_id}"
    name = f"{base}.{cam_id}"
    cdf_path = root / subject / D3_DIR / f"{name}.cdf"
    video = root / subject / "Videos" / f"{name}.mp4"
    pose = read_pose_cdf(cdf_path, 96, f"{seq_key}_{first:06d}")
    if stop > len(pose):
        raise SampleError(f"pose file has {len(pose)} frames, expected at least {stop}", file=str(cdf_path), sample=seq_key)
    d2_path = root / subject / D2_DIR / f"{name}.cdf"
    d2 = read_pose_cdf(d2_path, 64, seq_key) if d2_path.exists() else None
    mask_path = root / subject / MASK_DIR / f"{name}.mat"
    mask_file = open_mat73(mask_path, "mask file", seq_key) if use_masks and mask_path.exists() else None
    try:
        refs = None
        if mask_file is not None:
            refs = mat73_dataset(mask_file, "Masks", "mask file", seq_key).ravel()
        for f, image in video_frames(video, range(first, stop, stride), seq_key):
            key = f"{seq_key}_{f:06d}"
            joints = check_array(pose[f][H36M32_TO_H36M17], (17, 3), f"frame {f} Pose", cdf_path, key)
            in_front(joints, cdf_path, key)
            uv = project(joints, (cam.fx, cam.fy, cam.cx, cam.cy))
            crop = body_crop(uv, crop_size, context)
            distort = cam.distort if undistort else None
            mask = None
            if refs is not None:
                if f >= len(refs):
                    raise SampleError(f"mask file has {len(refs)} masks, frame {f} needed", file=str(mask_path), sample=key)
                try:
                    m = np.asarray(mask_file[refs[f]][()]).T      # stored column-major: W x H
                except (KeyError, ValueError, TypeError, OSError) as e:
                    raise SampleError(f"mask {f} unreadable: {e}", file=str(mask_path), sample=key) from None
                if m.shape != image.shape[:2]:
                    raise SampleError(f"mask {f} is {m.shape[::-1]} but the video frame {image.shape[1::-1]}",
                                      file=str(mask_path), sample=key)
                m = np.where(m > 0, 255, 0).astype(np.uint8)
                mask = crop.mask(m) if distort is None else undistorted_mask(m, crop, distort)
            extra = {}
            if d2 is not None and f < len(d2):
                extra.update(d2_check(d2[f][H36M32_TO_H36M17], uv, distort))
            yield crop_sample(
                crop, key, image, joints, uv, (cam.fx, cam.fy, cam.cx, cam.cy),
                mask=mask, distort=distort,
                meta={"dataset": "h36m", "split": split, "layout": "original", "source": str(video.relative_to(root)),
                      "annotation": str(cdf_path.relative_to(root)), "subject": subject, "sequence": sequence,
                      "action": action, "subaction": sub, "release_name": base,
                      "camera": cam_id, "frame": f, "image_size": [image.shape[1], image.shape[0]],
                      "joint_order": "h36m17", "root_index": 0, "root_kind": "pelvis",
                      "intrinsics_model": INTRINSICS_MODEL[undistort], **extra, **crop.meta()},
            )
    finally:
        if mask_file is not None:
            mask_file.close()


# -- h36m-fetch extracted frames ---------------------------------------------------------------
def extracted_root(src_root: Path) -> Path:
    return src_root / "processed" if (src_root / "processed").is_dir() else src_root


def load_extracted(root: Path, subjects: list[str], cameras: list[str], stride: int) -> tuple[dict, list]:
    """{(subject, action dir): (h36m17 joints (n,17,3), frames (n,), cameras (n,), fitted intrinsics)}
    and the items (subject, action dir, row) whose camera is wanted and frame - 1 is a multiple
    of `stride`."""
    annots, items = {}, []
    for subject in subjects:
        for annot in sorted((root / subject).glob("*/annot.h5")):
            action = annot.parent.name
            try:
                with h5py.File(annot, "r") as f:
                    missing = [k for k in ("pose/3d", "frame", "camera") if k not in f]
                    if missing:
                        raise SampleError(f"annot.h5 lacks {missing} (pose/3d needs h36m-fetch's current "
                                          "process_all.py)", file=str(annot))
                    pose = np.asarray(f["pose/3d"][()], np.float64)
                    frames = np.asarray(f["frame"][()]).astype(np.int64).ravel()
                    cams = np.asarray(f["camera"][()]).astype(np.int64).ravel()
                    fitted = {k: np.asarray(v[()], np.float64).ravel() for k, v in f["intrinsics"].items()} \
                        if "intrinsics" in f else {}
            except OSError as e:
                raise SampleError(f"unreadable annot.h5: {e}", file=str(annot)) from None
            if pose.ndim != 3 or pose.shape[1:] != (32, 3) or len(frames) != len(pose) or len(cams) != len(pose):
                raise SampleError(f"annot.h5 pose/3d {pose.shape}, frame {frames.shape}, camera {cams.shape}: "
                                  "expected (n, 32, 3), (n,), (n,)", file=str(annot))
            annots[(subject, action)] = (pose[:, H36M32_TO_H36M17].astype(np.float32), frames, cams, fitted)
            items += [(subject, action, row) for row in range(len(pose))
                      if str(cams[row]) in cameras and (frames[row] - 1) % stride == 0]
    return annots, items


def make_samples_extracted(item, *, root: Path, split: str, annots: dict, cameras: dict, intrinsics: str,
                           crop_size: int, context: float, undistort: bool = True):
    subject, action, row = item
    joints_all, frames, cams, fitted = annots[(subject, action)]
    frame, cam_id = int(frames[row]), str(cams[row])
    action_name, sub = parse_fetch_folder(action)
    sequence = canonical_sequence(action_name, sub)
    key = f"h36m_{split}_{subject}_{key_part(sequence)}_{cam_id}_{frame - 1:06d}"
    annot = root / subject / action / "annot.h5"
    image_path = root / subject / action / "imageSequence" / cam_id / f"img_{frame:06d}.jpg"
    joints = check_array(joints_all[row], (17, 3), f"pose/3d row {row}", annot, key)
    in_front(joints, annot, key)
    distort = None
    if intrinsics == "annot":
        if cam_id not in fitted or fitted[cam_id].shape != (4,):
            raise SampleError(f"annot.h5 lacks intrinsics/{cam_id} (alpha_x, x_0, alpha_y, y_0)", file=str(annot), sample=key)
        fx, cx, fy, cy = fitted[cam_id]
    else:
        cam = cameras[cam_id]
        fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
        distort = cam.distort if undistort else None
    uv = project(joints, (fx, fy, cx, cy))
    image = load_rgb(image_path, key)
    crop = body_crop(uv, crop_size, context)
    yield crop_sample(
        crop, key, image, joints, uv, (fx, fy, cx, cy), distort=distort,
        meta={"dataset": "h36m", "split": split, "layout": "extracted", "source": str(image_path.relative_to(root)),
              "annotation": str(annot.relative_to(root)), "annotation_row": row, "subject": subject,
              "sequence": sequence, "action": action_name, "subaction": sub, "release_name": action,
              "camera": cam_id, "frame": frame - 1, "image_size": [image.shape[1], image.shape[0]],
              "joint_order": "h36m17", "root_index": 0, "root_kind": "pelvis",
              "intrinsics_model": ("pinhole fitted by h36m-fetch (annot.h5); lens distortion left in the crops"
                                   if intrinsics == "annot" else INTRINSICS_MODEL[distort is not None]),
              **crop.meta()},
    )


# -- command -----------------------------------------------------------------------------------
def detect_layout(src_root: Path) -> str:
    if (src_root / "processed").is_dir() or list(src_root.glob("S*/*/annot.h5")):
        return "extracted"
    if list(src_root.glob(f"S*/{D3_DIR}")):
        return "original"
    raise ConversionError(f"{src_root}: neither S*/{D3_DIR}/ (original release) nor "
                          "[processed/]S*/<Action>-<sub>/annot.h5 (h36m-fetch) found")


@dataclass
class CameraSource:
    """Where the intrinsics and sequence names come from: metadata.xml when given (or found in
    the dataset root), else the built-in constants and mapping."""
    metadata_xml: Path | None
    cameras: dict[str, Camera]
    sequences: dict[str, dict[str, tuple[str, int]]]
    sequence_names: str


def camera_source(src_root: Path, metadata_xml: Path | None = None) -> CameraSource:
    """SampleError for an unreadable metadata.xml."""
    if metadata_xml is None and (src_root / "metadata.xml").exists():
        metadata_xml = src_root / "metadata.xml"
    cams = cameras_from_metadata(metadata_xml) if metadata_xml else cameras_from_constants()
    from_xml = sequences_from_metadata(metadata_xml) if metadata_xml else None
    return CameraSource(metadata_xml, cams, from_xml or builtin_sequences(),
                        f"{metadata_xml} <mapping>" if from_xml else "built-in copy of metadata.xml's <mapping>")


def check_cameras(cameras, known: dict) -> list[str]:
    wanted = list(cameras)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ValueError(f"unknown cameras {unknown}; known: {sorted(known)}")
    return wanted


def check_frames_per_item(frames_per_item: int) -> None:
    if frames_per_item < 1:
        raise ValueError("must be at least 1")


def convert(src_root: Path, out_dir: Path, split: str, *, layout: str = "auto", subjects=None, cameras=CAMERA_IDS,
            stride: int | None = None, frames_per_item: int = 16, exclude=(DEFAULT_EXCLUDE,),
            metadata_xml: Path | None = None, masks: bool = True, intrinsics: str = "constants",
            undistort: bool = True, crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT,
            warn: Callable[[str], None] = warn_on_stderr, **driver) -> dict | None:
    """One split of Human3.6M at `src_root` -> shards in `out_dir`; returns the manifest, or None
    when no frames are found (nothing is written).

    `layout`: "original" (CDF + mp4), "extracted" (h36m-fetch) or "auto"; `subjects`: default
    TRAIN_SUBJECTS / TEST_SUBJECTS (absent ones are passed to `warn`); `stride`: default
    DEFAULT_STRIDES[layout][split]; `exclude`: <subject>/<Action>.<camid> names; `metadata_xml`:
    the cameras' and sequences' source (default SRC_ROOT/metadata.xml when present, else built-in
    constants); `intrinsics`: "constants" or "annot" (extracted layout). `driver`:
    convert_split's options. ValueError for a bad option, SampleError for an unreadable file,
    ConversionError for a layout that is not there."""
    default_subjects = {"train": TRAIN_SUBJECTS, "test": TEST_SUBJECTS}
    if split not in default_subjects:
        raise ValueError(f"unknown split {split!r}")
    if layout == "auto":
        layout = detect_layout(src_root)
    source = camera_source(src_root, metadata_xml)
    cams, metadata_xml = source.cameras, source.metadata_xml
    wanted_cams = check_cameras(cameras, cams)
    check_frames_per_item(frames_per_item)
    excluded = set(exclude)
    stride = stride or DEFAULT_STRIDES[layout][split]
    root = extracted_root(src_root) if layout == "extracted" else src_root
    wanted_subjects = list(default_subjects[split] if subjects is None else subjects)
    present = [s for s in wanted_subjects if (root / s).is_dir()]
    absent = [s for s in wanted_subjects if s not in present]
    if absent:
        warn(f"h36m/{split}: warning: subjects {absent} not found under {root}")
    if layout == "original":
        items, used = original_items(root, present, wanted_cams, excluded, stride, frames_per_item, source.sequences)
        make = functools.partial(make_samples_original, root=root, split=split, stride=stride, cameras=cams,
                                 use_masks=masks, crop_size=crop_size, context=context, undistort=undistort)
        layout_extra = {"sequences": used, "exclude": sorted(excluded), "frames_per_item": frames_per_item,
                        "sequence_names": source.sequence_names,
                        "joint_source": "MyPoseFeatures/D3_Positions_mono",
                        "masks": "MySegmentsMat/ground_truth_bs when present" if masks else "off",
                        "camera_model": "metadata.xml/w0 constants; " + INTRINSICS_MODEL[undistort]}
    else:
        annots, items = load_extracted(root, present, wanted_cams, stride)
        make = functools.partial(make_samples_extracted, root=root, split=split, annots=annots, cameras=cams,
                                 intrinsics=intrinsics, crop_size=crop_size, context=context,
                                 undistort=undistort)
        layout_extra = {"sequences": sorted(f"{s}/{a}" for s, a in annots), "masks": "none in this layout",
                        "joint_source": "annot.h5 pose/3d (h36m-fetch's copy of D3_Positions_mono)",
                        "intrinsics": intrinsics,
                        "camera_model": "pinhole fitted by h36m-fetch; lens distortion left in the crops"
                        if intrinsics == "annot" else "metadata.xml/w0 constants; " + INTRINSICS_MODEL[undistort]}
    if not items:
        return None
    return convert_split(items, make, out_dir, desc=f"h36m/{split}",
                         manifest_extra={"dataset": "h36m", "split": split, "joint_order": "h36m17",
                                         "layout": layout, "subjects": present, "cameras": wanted_cams,
                                         "camera_intrinsics": {c: cams[c].manifest() for c in wanted_cams},
                                         "camera_source": str(metadata_xml) if metadata_xml else "built-in constants",
                                         "stride": stride, "joint_map": f"h36m32 -> h36m17 {H36M32_TO_H36M17.tolist()}",
                                         "crop_size": crop_size, "context": context,
                                         "undistorted": undistort and not (layout == "extracted" and intrinsics == "annot"),
                                         **layout_extra},
                         **driver)


@click.command("h36m")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["auto", "original", "extracted"]), default="auto", show_default=True,
              help="original release (CDF + mp4) or h36m-fetch's extracted frames (processed/.../annot.h5 + jpg)")
@click.option("--splits", default="train,test", show_default=True, help="comma list of train, test")
@click.option("--train-subjects", default=",".join(TRAIN_SUBJECTS), show_default=True)
@click.option("--test-subjects", default=",".join(TEST_SUBJECTS), show_default=True)
@click.option("--cameras", default=",".join(CAMERA_IDS), show_default=True, help="comma list of camera ids")
@click.option("--train-stride", type=int, default=None,
              help="keep video frames whose 0-based index is a multiple of this [original: 5, extracted: 1]")
@click.option("--test-stride", type=int, default=None, help="the same for test subjects [original: 64, extracted: 1]")
@click.option("--frames-per-item", type=int, default=16, show_default=True,
              help="original layout: kept frames per work item (one video chunk decoded in order)")
@click.option("--exclude", default=DEFAULT_EXCLUDE, show_default=True,
              help="comma list of <subject>/<Action>.<camid> to leave out (default: the corrupt S11 video)")
@click.option("--metadata", "metadata_xml", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="metadata.xml for the camera intrinsics [SRC_ROOT/metadata.xml when present, else built-in constants]")
@click.option("--masks/--no-masks", default=True, show_default=True,
              help="original layout: crop MySegmentsMat/ground_truth_bs masks when present")
@click.option("--intrinsics", type=click.Choice(["constants", "annot"]), default="constants", show_default=True,
              help="extracted layout: camera constants, or the intrinsics h36m-fetch fitted into annot.h5")
@click.option("--undistort/--no-undistort", default=True, show_default=True,
              help="resample crops (and masks) through the cameras' lens model so the crop camera is an exact "
                   "pinhole; --no-undistort leaves the distortion in (not applied with --intrinsics annot)")
@conversion_options
def cli(src_root, out_dir, layout, splits, train_subjects, test_subjects, cameras, train_stride, test_stride,
        frames_per_item, exclude, metadata_xml, masks, intrinsics, undistort, crop_size, context, **kw):
    """Human3.6M (original release or h36m-fetch frames) -> OUT_DIR/{train,test}/ shards.

    h36m17 joints in camera-frame millimetres from D3_Positions_mono; crops around the body,
    undistorted to the pinhole part of the camera; background-subtraction masks when present."""
    # Options are checked before the first split is written.
    if layout == "auto":
        layout = detect_layout(src_root)
    wanted_cams = comma_list(cameras)
    with bad_parameter("--cameras"):
        check_cameras(wanted_cams, camera_source(src_root, metadata_xml).cameras)
    with bad_parameter("--frames-per-item"):
        check_frames_per_item(frames_per_item)
    subjects = {"train": comma_list(train_subjects), "test": comma_list(test_subjects)}
    strides = {"train": train_stride, "test": test_stride}
    for split in comma_list(splits):
        if split not in subjects:
            raise click.BadParameter(f"unknown split {split!r}", param_hint="--splits")
        m = convert(src_root, out_dir / split, split, layout=layout, subjects=subjects[split], cameras=wanted_cams,
                    stride=strides[split], frames_per_item=frames_per_item, exclude=comma_list(exclude),
                    metadata_xml=metadata_xml, masks=masks, intrinsics=intrinsics, undistort=undistort,
                    crop_size=crop_size, context=context, warn=echo_warning, **driver_kwargs(**kw))
        if m is None:
            click.echo(f"h36m/{split}: no frames found, nothing written", err=True)
            continue
        click.echo(f"h36m/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

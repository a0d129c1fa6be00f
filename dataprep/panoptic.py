"""CMU Panoptic Studio hands in their released layouts -> shards.

`dataprep panoptic`: the dome's triangulated 3D hands (the paper's PAN target), per sequence as
the panoptic-toolbox download + extraction leaves it:

<root>/<seq>/calibration_<seq>.json           {"cameras": [{name, type, resolution, K, distCoef, R, t}]}
<root>/<seq>/hdHand3d/handRecon3D_hd%08d.json {"people": [{id, left_hand/right_hand: {landmarks (63, world cm),
                                               averageScore [21], averageReproError [21], validity [21], visibility}}]}
<root>/<seq>/hdImgs/00_XX/00_XX_%08d.jpg      HD views, 1920x1080

One sample per frame x person x hand x HD view where every joint is valid, passes the score and
reprojection-error thresholds, lies in front of the camera and projects inside the image.
Camera-frame millimetres: 10 * (R X + t). Left hands are mirrored to right.

Lens distortion: the HD cameras follow OpenCV's 5-coefficient model. The stored crop is
*undistorted*: every crop pixel is mapped back through the pinhole crop camera, distorted with
the calibration's coefficients and sampled from the original image (dataprep.lens). So the crop
is an ideal pinhole image, `intrinsics` are the calibration's pinhole K
carried through the crop, and projecting `joints3d_mm` with them gives `joints2d_px` exactly.
Calibration K uses OpenCV's pixel-centre convention; the crops use pixel corners (as PIL and
DALI do), so cx, cy are shifted by +0.5 on the way.

`dataprep panoptic-2d`: the 2D-only hand_labels sets (no 3D, no intrinsics in the shards):

<root>/hand_labels/manual_{train,test}/<name>.jpg + <name>.json     {hand_pts: 21 x [x, y, flag], is_left, ...}
<root>/hand_labels_synth/synth{1..4}/<name>.jpg + <name>.json       same per-image JSON
<root>/hand143_panopticdb/imgs/%08d.jpg + hands_v143_14817.json     {"root": [{img_paths, joint_self: 21 x [x, y, vis], ...}]}
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from shards.camera import project
from shards.schema import Sample, SampleError

from .common import (DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, convert_split, crop_around, key_part, load_rgb,
                     warn_on_stderr)
from .options import bad_parameter, comma_list, conversion_options, driver_kwargs, echo_warning
from .lens import undistorted_crop

# Range-of-motion sequences Monocular Total Capture held out; everything else is train.
TEST_SEQUENCES = ("171204_pose5", "171204_pose6")
HAND_KEYS = {"left_hand": "left", "right_hand": "right"}   # OpenPose hand order = hand21
NUM_JOINTS = 21


def read_json(path: Path, name: str, sample: str | None = None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SampleError(f"{name} missing", file=str(path), sample=sample) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(f"malformed {name}: {e}", file=str(path), sample=sample) from None


def float_array(value, shape: tuple, what: str, path: Path, sample: str | None) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise SampleError(f"{what} is not numeric: {e}", file=str(path), sample=sample) from None
    if a.size != int(np.prod(shape)):
        raise SampleError(f"{what} has {a.size} values, expected {int(np.prod(shape))} "
                          f"(shape {shape})", file=str(path), sample=sample)
    return a.reshape(shape)


# -- cameras ---------------------------------------------------------------------------------
@dataclass
class Camera:
    name: str
    K: np.ndarray        # 3 x 3, OpenCV pixel-centre convention
    dist: np.ndarray     # k1, k2, p1, p2, k3 (OpenCV order)
    R: np.ndarray        # 3 x 3 world -> camera
    t: np.ndarray        # 3, centimetres
    width: int
    height: int

    def to_camera_mm(self, world_cm: np.ndarray) -> np.ndarray:
        return 10.0 * (world_cm @ self.R.T + self.t)

    def pinhole(self, xyz: np.ndarray) -> np.ndarray:
        """Undistorted projection, OpenCV pixel-centre convention (as cv2.projectPoints, the
        skew entry K[0, 1] is not used)."""
        return project(xyz, (self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]))

    def distort_pixels(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ideal pinhole pixels -> where the lens puts them (both OpenCV convention), and
        whether the distortion model is still one-to-one there."""
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        x, y = (uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy
        xd, yd, ok = distort_normalised(x, y, self.dist)
        return np.stack([fx * xd + cx, fy * yd + cy], axis=-1), ok

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cv2.projectPoints for camera-frame points: distorted pixels and the one-to-one flag."""
        return self.distort_pixels(self.pinhole(xyz))


def distort_normalised(x, y, dist):
    """OpenCV's 5-coefficient model on normalised coordinates. The radial polynomial folds back
    beyond the radius where r * radial(r) stops increasing; points there would land inside the
    image at the wrong place, so they are flagged (ok = False)."""
    k1, k2, p1, p2, k3 = (float(c) for c in dist)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    ok = 1 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3)) > 0
    return xd, yd, ok


def load_calibration(path: Path) -> dict[str, Camera]:
    """HD cameras of a calibration_<seq>.json (VGA and Kinect entries are ignored)."""
    data = read_json(path, "calibration")
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise SampleError("calibration has no 'cameras' list", file=str(path))
    cams = {}
    for c in data["cameras"]:
        if not isinstance(c, dict) or c.get("type") != "hd":
            continue
        name = str(c.get("name"))
        where = f"camera {name}"
        try:
            width, height = (int(v) for v in c["resolution"])
            cam = Camera(name=name, K=float_array(c["K"], (3, 3), f"{where} K", path, None),
                         dist=float_array(c["distCoef"], (5,), f"{where} distCoef", path, None),
                         R=float_array(c["R"], (3, 3), f"{where} R", path, None),
                         t=float_array(c["t"], (3,), f"{where} t", path, None), width=width, height=height)
        except KeyError as e:
            raise SampleError(f"{where} lacks {e.args[0]!r}", file=str(path)) from None
        except (TypeError, ValueError) as e:
            raise SampleError(f"{where} has a malformed resolution: {e}", file=str(path)) from None
        if not all(np.all(np.isfinite(a)) for a in (cam.K, cam.dist, cam.R, cam.t)):
            raise SampleError(f"{where} has NaN/inf", file=str(path))
        cams[name] = cam
    return cams


# -- hands -----------------------------------------------------------------------------------
@dataclass
class Hand3D:
    person: int
    side: str
    world_cm: np.ndarray    # 21 x 3
    score: np.ndarray       # 21
    repro_error: np.ndarray  # 21, px; 1e5 marks a joint that was not reconstructed
    validity: np.ndarray    # 21

    def usable(self, min_score: float, max_repro_error: float) -> bool:
        return bool(np.all(self.validity == 1) and np.all(self.score >= min_score)
                    and np.all(self.repro_error <= max_repro_error))


def read_hands(path: Path, sample: str) -> list[Hand3D]:
    data = read_json(path, "hand file", sample)
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise SampleError("hand file has no 'people' list", file=str(path), sample=sample)
    hands = []
    for person in people:
        try:
            person_id = int(person["id"])
        except (KeyError, TypeError, ValueError):
            raise SampleError("a 'people' entry has no integer 'id'", file=str(path), sample=sample) from None
        for hand_key, side in HAND_KEYS.items():
            h = person.get(hand_key)
            if h is None:
                continue
            what = f"person {person_id} {hand_key}"
            if not isinstance(h, dict):
                raise SampleError(f"{what} is not an object", file=str(path), sample=sample)
            try:
                hands.append(Hand3D(
                    person=person_id, side=side,
                    world_cm=float_array(h["landmarks"], (NUM_JOINTS, 3), f"{what} landmarks", path, sample),
                    score=float_array(h["averageScore"], (NUM_JOINTS,), f"{what} averageScore", path, sample),
                    repro_error=float_array(h["averageReproError"], (NUM_JOINTS,), f"{what} averageReproError", path, sample),
                    validity=float_array(h["validity"], (NUM_JOINTS,), f"{what} validity", path, sample)))
            except KeyError as e:
                raise SampleError(f"{what} lacks {e.args[0]!r}", file=str(path), sample=sample) from None
    return hands


def lens_of(cam: Camera):
    """The camera's distortion in the crops' pixel-corner convention (dataprep.lens)."""
    def distort(uv: np.ndarray):
        uv_lens, ok = cam.distort_pixels(uv - 0.5)
        return uv_lens + 0.5, ok
    return distort


def view_key_of(split: str, item) -> str:
    """Key prefix of the samples of one (sequence, HD frame, camera) item; each hand adds
    _p<person>_<side>."""
    seq, frame, cam_name = item
    return f"panoptic_{split}_{key_part(seq)}_{frame:08d}_{key_part(cam_name)}"


def make_samples(item, *, root: Path, split: str, cameras: dict, crop_size: int, context: float,
                 min_score: float, max_repro_error: float):
    """(sequence, HD frame, camera) -> one sample per usable hand seen by that camera."""
    seq, frame, cam_name = item
    cam: Camera = cameras[seq][cam_name]
    view_key = view_key_of(split, item)
    hand_path = root / seq / "hdHand3d" / f"handRecon3D_hd{frame:08d}.json"
    image_path = root / seq / "hdImgs" / cam_name / f"{cam_name}_{frame:08d}.jpg"
    image = None
    for hand in read_hands(hand_path, view_key):
        if hand.person < 0 or not hand.usable(min_score, max_repro_error):
            continue   # id -1 marks a spurious reconstruction
        key = f"{view_key}_p{hand.person}_{hand.side}"
        if not np.all(np.isfinite(hand.world_cm)):
            raise SampleError("landmarks contain NaN/inf", file=str(hand_path), sample=key)
        xyz_mm = cam.to_camera_mm(hand.world_cm)
        if np.any(xyz_mm[:, 2] <= 0):
            continue
        uv_lens, ok = cam.project(xyz_mm)
        u, v = uv_lens[:, 0] + 0.5, uv_lens[:, 1] + 0.5   # pixel-corner convention
        if not (ok.all() and np.all((u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height))):
            continue
        if image is None:
            image = load_rgb(image_path, key)
            if image.shape[:2] != (cam.height, cam.width):
                raise SampleError(f"image is {image.shape[1]}x{image.shape[0]}, calibration says "
                                  f"{cam.width}x{cam.height}", file=str(image_path), sample=key)
        uv = cam.pinhole(xyz_mm) + 0.5
        crop = crop_around(uv, crop_size, context, mirror=hand.side == "left")
        yield Sample(
            key=key,
            image=undistorted_crop(image, crop, lens_of(cam)),
            joints3d_mm=crop.points3d(xyz_mm),
            joints2d_px=crop.points(uv),
            visible=np.ones(NUM_JOINTS, bool),
            intrinsics=crop.intrinsics(cam.K[0, 0], cam.K[1, 1], cam.K[0, 2] + 0.5, cam.K[1, 2] + 0.5),
            meta={"dataset": "panoptic", "split": split, "source": str(image_path.relative_to(root)),
                  "annotation": str(hand_path.relative_to(root)), "sequence": seq, "hd_frame": frame,
                  "camera": cam_name, "person_id": hand.person, "side": hand.side,
                  "joint_order": "hand21", "root_index": 0, "root_kind": "wrist",
                  "undistorted": True, "dist_coef": cam.dist.tolist(),
                  "min_joint_score": float(hand.score.min()), "max_joint_repro_error_px": float(hand.repro_error.max()),
                  **crop.meta()},
        )


def find_sequences(root: Path, wanted: list[str]) -> list[str]:
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / f"calibration_{p.name}.json").exists())
    if not wanted:
        if not found:
            raise ConversionError(f"no <seq>/calibration_<seq>.json under {root}")
        return found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise ConversionError(f"sequences {missing} have no {root}/<seq>/calibration_<seq>.json")
    return wanted


def hand_frames(seq_dir: Path) -> list[int]:
    frames = []
    for p in sorted((seq_dir / "hdHand3d").glob("handRecon3D_hd*.json")):
        m = re.fullmatch(r"handRecon3D_hd(\d+)\.json", p.name)
        if m:
            frames.append(int(m.group(1)))
    return frames


@dataclass
class Dome:
    """The sequences read and, per sequence, the HD cameras used and their calibration."""
    sequences: list[str]
    cameras: dict[str, list[str]]
    calibration: dict[str, dict[str, Camera]]


def load_dome(src_root: Path, sequences=None, cameras=None) -> Dome:
    """Sequences (default: every <seq>/calibration_<seq>.json) and HD cameras (default: each one
    with an hdImgs/<cam> folder) under `src_root`. SampleError for an unreadable calibration,
    ConversionError for a sequence or camera that is not there."""
    seqs = find_sequences(src_root, list(sequences or []))
    wanted_cams = list(cameras or [])
    calib, cams_used = {}, {}
    for seq in seqs:
        hd = load_calibration(src_root / seq / f"calibration_{seq}.json")
        if wanted_cams:
            unknown = [c for c in wanted_cams if c not in hd]
            if unknown:
                raise ConversionError(f"{seq}: cameras {unknown} are not HD cameras of calibration_{seq}.json")
            cams_used[seq] = wanted_cams
        else:
            cams_used[seq] = [c for c in sorted(hd) if (src_root / seq / "hdImgs" / c).is_dir()]
        calib[seq] = {c: hd[c] for c in cams_used[seq]}
    return Dome(seqs, cams_used, calib)


def convert(src_root: Path, out_dir: Path, split: str, *, sequences=None, test_sequences=TEST_SEQUENCES,
            cameras=None, min_score: float = 0.2, max_repro_error: float = 10.0,
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, dome: Dome | None = None,
            warn: Callable[[str], None] = warn_on_stderr, **driver) -> dict | None:
    """One split of the Panoptic dome's 3D hands at `src_root` -> shards in `out_dir`; returns the
    manifest, or None when no sequence falls in the split (nothing is written).

    "test" is the sequences in `test_sequences`, "train" the rest of `sequences`; `cameras`: HD
    camera names (default every one with images). `dome`: load_dome's result, to read the
    calibrations once for both splits. A sequence without hand frames or cameras is passed to
    `warn`. `driver`: convert_split's options."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    dome = dome if dome is not None else load_dome(src_root, sequences, cameras)
    test_seqs = list(test_sequences)
    split_seqs = [s for s in dome.sequences if (s in test_seqs) == (split == "test")]
    if not split_seqs:
        return None
    items = []
    for seq in split_seqs:
        frames = hand_frames(src_root / seq)
        if not frames or not dome.cameras[seq]:
            warn(f"panoptic/{split}: warning: {seq} has {len(frames)} hdHand3d frames and "
                 f"{len(dome.cameras[seq])} HD cameras with hdImgs")
        items += [(seq, frame, cam) for frame in frames for cam in dome.cameras[seq]]
    make = functools.partial(make_samples, root=src_root, split=split, cameras=dome.calibration, crop_size=crop_size,
                             context=context, min_score=min_score, max_repro_error=max_repro_error)
    return convert_split(items, make, out_dir, desc=f"panoptic/{split}", item_key=functools.partial(view_key_of, split),
                         manifest_extra={"dataset": "panoptic", "split": split, "joint_order": "hand21",
                                         "sequences": split_seqs, "test_sequences": test_seqs,
                                         "cameras": {s: dome.cameras[s] for s in split_seqs},
                                         "min_score": min_score, "max_repro_error": max_repro_error,
                                         "undistorted": True, "crop_size": crop_size, "context": context},
                         **driver)


@click.command("panoptic")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True, help="comma list of train, test")
@click.option("--sequences", default=None, help="comma list of sequences to read (default: every <seq>/calibration_<seq>.json under SRC_ROOT)")
@click.option("--test-sequences", default=",".join(TEST_SEQUENCES), show_default=True,
              help="sequences forming the test split (Monocular Total Capture's range-of-motion set); the rest is train")
@click.option("--cameras", default=None, help="comma list of HD cameras, e.g. 00_03,00_12 (default: every HD camera with an hdImgs/<cam> folder)")
@click.option("--min-score", type=float, default=0.2, show_default=True,
              help="keep a hand only if every joint's averageScore (2D detection confidence) is at least this")
@click.option("--max-repro-error", type=float, default=10.0, show_default=True,
              help="keep a hand only if every joint's averageReproError (px) is at most this (1e5 = not reconstructed)")
@conversion_options
def cli(src_root, out_dir, splits, sequences, test_sequences, cameras, min_score, max_repro_error, crop_size, context, **kw):
    """CMU Panoptic Studio 3D hands (hdHand3d + hdImgs + calibration) -> OUT_DIR/{train,test}/.

    hand21, camera-frame millimetres, undistorted crops with exact pinhole intrinsics, left
    hands mirrored to right."""
    dome = load_dome(src_root, comma_list(sequences), comma_list(cameras))
    for split in comma_list(splits):
        if split not in ("train", "test"):
            raise click.BadParameter(f"unknown split {split!r}", param_hint="--splits")
        m = convert(src_root, out_dir / split, split, test_sequences=comma_list(test_sequences), min_score=min_score,
                    max_repro_error=max_repro_error, crop_size=crop_size, context=context, dome=dome,
                    warn=echo_warning, **driver_kwargs(**kw))
        if m is None:
            click.echo(f"panoptic/{split}: no sequences, nothing written")
        else:
            click.echo(f"panoptic/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")


# -- the 2D-only hand_labels sets ------------------------------------------------------------
MANUAL_SETS = {"manual_train": "hand_labels/manual_train", "manual_test": "hand_labels/manual_test"}
SYNTH_SETS = {f"synth{i}": f"hand_labels_synth/synth{i}" for i in range(1, 5)}
# The 2D labels are pixel coordinates in OpenCV's convention (integer = pixel centre):
# panopticdb's are projections of the dome's 3D hands through its OpenCV-calibrated cameras, and
# the manual and synthetic sets come from the same group's OpenCV-based tooling. Crops use pixel
# corners, so labels move by +0.5 px (docs/datasets.md, "Pixel centres").
LABEL_PIXEL_SHIFT = 0.5
PANOPTICDB = "hand143_panopticdb"
PANOPTICDB_JSON = "hands_v143_14817.json"
ALL_2D_SETS = (*MANUAL_SETS, *SYNTH_SETS, "panopticdb")


def key_2d(split: str, item) -> str:
    set_name, ref = item
    if set_name == "panopticdb":
        return f"panoptic2d_{split}_panopticdb_{ref:08d}"
    return f"panoptic2d_{split}_{set_name}_{key_part(Path(ref).stem)}"


def make_samples_2d(item, *, root: Path, split: str, panopticdb: list, panopticdb_side: str,
                    crop_size: int, context: float):
    """(set, json path relative to root | panopticdb index) -> one 2D-only sample."""
    set_name, ref = item
    key = key_2d(split, item)
    if set_name == "panopticdb":
        entry_file = root / PANOPTICDB / PANOPTICDB_JSON
        entry = panopticdb[ref]
        if not isinstance(entry, dict) or "joint_self" not in entry or "img_paths" not in entry:
            raise SampleError(f"root[{ref}] lacks joint_self/img_paths", file=str(entry_file), sample=key)
        pts = float_array(entry["joint_self"], (NUM_JOINTS, 3), f"root[{ref}] joint_self", entry_file, key)
        image_path = root / PANOPTICDB / entry["img_paths"]
        side, side_source = panopticdb_side, "assumed (panopticdb has no side key)"
    else:
        entry_file = root / ref
        entry = read_json(entry_file, "annotation", key)
        if not isinstance(entry, dict) or "hand_pts" not in entry:
            raise SampleError("annotation lacks hand_pts", file=str(entry_file), sample=key)
        pts = float_array(entry["hand_pts"], (NUM_JOINTS, 3), "hand_pts", entry_file, key)
        is_left = entry.get("is_left")
        if is_left not in (0, 1):   # also admits True/False
            raise SampleError(f"unknown hand side is_left={is_left!r}", file=str(entry_file), sample=key)
        side, side_source = ("left" if is_left else "right"), "is_left"
        image_path = entry_file.with_suffix(".jpg")
    labelled = pts[:, 2] > 0
    if not np.all(np.isfinite(pts[labelled, :2])):
        raise SampleError("labelled joints contain NaN/inf", file=str(entry_file), sample=key)
    if labelled.sum() < 2:
        raise SampleError(f"only {int(labelled.sum())} labelled joints: no hand to crop", file=str(entry_file), sample=key)
    # unlabelled joints: kept, flagged invisible; labels are pixel-centre coordinates -> corners
    uv = np.where(np.isfinite(pts[:, :2]), pts[:, :2] + LABEL_PIXEL_SHIFT, 0.0)
    image = load_rgb(image_path, key)
    crop = crop_around(uv[labelled], crop_size, context, mirror=side == "left")
    yield Sample(
        key=key,
        image=crop.image(image),
        joints2d_px=crop.points(uv),
        visible=labelled,
        meta={"dataset": "panoptic_hand_labels", "split": split, "set": set_name,
              "source": str(image_path.relative_to(root)), "annotation": str(entry_file.relative_to(root)),
              "side": side, "side_source": side_source, "has_3d": False, "label_shift_px": LABEL_PIXEL_SHIFT,
              "joint_order": "hand21", "root_index": 0, "root_kind": "wrist", **crop.meta()},
    )


def list_2d_items(root: Path, set_name: str) -> tuple[list, list]:
    """Items of one set and (panopticdb only) its entries."""
    if set_name == "panopticdb":
        path = root / PANOPTICDB / PANOPTICDB_JSON
        data = read_json(path, PANOPTICDB_JSON)
        if not isinstance(data, dict) or not isinstance(data.get("root"), list):
            raise SampleError("expected {'root': [...]}", file=str(path))
        return [("panopticdb", i) for i in range(len(data["root"]))], data["root"]
    folder = root / {**MANUAL_SETS, **SYNTH_SETS}[set_name]
    return [(set_name, str(p.relative_to(root))) for p in sorted(folder.glob("*.json"))], []


def set_present(root: Path, set_name: str) -> bool:
    if set_name == "panopticdb":
        return (root / PANOPTICDB / PANOPTICDB_JSON).exists()
    return (root / {**MANUAL_SETS, **SYNTH_SETS}[set_name]).is_dir()


DEFAULT_2D_SETS = {"train": ["manual_train", "panopticdb"], "test": ["manual_test"]}


def check_2d_sets(sets) -> list[str]:
    sets = list(sets)
    unknown = [s for s in sets if s not in ALL_2D_SETS]
    if unknown:
        raise ValueError(f"unknown sets {unknown}; choose from {ALL_2D_SETS}")
    return sets


def convert_2d(src_root: Path, out_dir: Path, split: str, *, sets=None, panopticdb_side: str = "right",
               crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, **driver) -> dict:
    """One split of the 2D-only hand_labels sets at `src_root` -> shards in `out_dir`; returns the
    manifest. `sets`: of ALL_2D_SETS (default DEFAULT_2D_SETS[split]); `panopticdb_side`: the
    side assumed for panopticdb, whose JSON has none. `driver`: convert_split's options.
    ValueError for an unknown set, ConversionError for a missing one or two files giving the same
    sample key, SampleError for an unreadable panopticdb JSON."""
    if split not in DEFAULT_2D_SETS:
        raise ValueError(f"unknown split {split!r}")
    sets = check_2d_sets(DEFAULT_2D_SETS[split] if sets is None else sets)
    missing = [s for s in sets if not set_present(src_root, s)]
    if missing:
        raise ConversionError(f"sets {missing} not found under {src_root} (expected the released "
                              "hand_labels/, hand_labels_synth/, hand143_panopticdb/ folders)")
    items, panopticdb, keys = [], [], {}
    for set_name in sets:
        set_items, entries = list_2d_items(src_root, set_name)
        for s, ref in set_items:   # keys are made from file names: catch collisions up front
            if s != "panopticdb":
                k = (s, key_part(Path(ref).stem))
                if k in keys:
                    raise ConversionError(f"{ref} and {keys[k]} give the same sample key")
                keys[k] = ref
        items += set_items
        panopticdb = entries or panopticdb
    make = functools.partial(make_samples_2d, root=src_root, split=split, panopticdb=panopticdb,
                             panopticdb_side=panopticdb_side, crop_size=crop_size, context=context)
    return convert_split(items, make, out_dir, desc=f"panoptic-2d/{split}", item_key=functools.partial(key_2d, split),
                         manifest_extra={"dataset": "panoptic_hand_labels", "split": split, "joint_order": "hand21",
                                         "sets": sets, "has_3d": False, "panopticdb_side": panopticdb_side,
                                         "crop_size": crop_size, "context": context},
                         **driver)


@click.command("panoptic-2d")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True, help="comma list of train, test")
@click.option("--train-sets", default="manual_train,panopticdb", show_default=True,
              help=f"sets forming train, from {', '.join(ALL_2D_SETS)}")
@click.option("--test-sets", default="manual_test", show_default=True, help="sets forming test")
@click.option("--panopticdb-side", type=click.Choice(["right", "left"]), default="right", show_default=True,
              help="hand side assumed for hand143_panopticdb, whose JSON has no side key (unconfirmed)")
@conversion_options
def cli_2d(src_root, out_dir, splits, train_sets, test_sets, panopticdb_side, crop_size, context, **kw):
    """CMU Panoptic hand_labels (manual, synth, panopticdb) -> OUT_DIR/{train,test}/, 2D only.

    Samples carry joints2d_px and visibility (the annotation flag) but no joints3d_mm or
    intrinsics: there is no 3D for these images. Left hands are mirrored to right."""
    sets = {"train": comma_list(train_sets), "test": comma_list(test_sets)}
    for split in comma_list(splits):
        if split not in sets:
            raise click.BadParameter(f"unknown split {split!r}", param_hint="--splits")
        with bad_parameter(None):
            check_2d_sets(sets[split])
        m = convert_2d(src_root, out_dir / split, split, sets=sets[split], panopticdb_side=panopticdb_side,
                       crop_size=crop_size, context=context, **driver_kwargs(**kw))
        click.echo(f"panoptic-2d/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

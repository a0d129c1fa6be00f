"""STB (Stereo Hand Pose Tracking Benchmark) in its released layout -> shards. Real images of
left hands; a target domain.

<root>/images/B{1..6}{Counting,Random}/SK_color_%d.png  BB_left_%d.png  BB_right_%d.png  (frames
       0..1499, not zero-padded, 640x480; SK_depth_%d.png unused; some copies omit images/)
<root>/labels/B{1..6}{Counting,Random}_{SK,BB}.mat      'handPara': 3 x 21 x 1500, millimetres

_SK.mat joints are in the SK depth camera frame and are moved into the SK colour frame;
_BB.mat joints are in the left BB camera frame (the right camera sits 120.054 mm along +x).
STB's joint 0 is the palm centre, not the wrist: it is kept as the root (meta root_kind "palm")
unless --root wrist extrapolates a wrist. All hands are left hands and are mirrored to right.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np
import scipy.io
from scipy.spatial.transform import Rotation

from shards.camera import project
from shards.schema import Sample, SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, convert_split, crop_around, load_rgb
from .options import bad_parameter, checked_splits, comma_list, conversion_options, driver_kwargs

# hand21[j] = stb[PERM[j]]; STB: palm, little MCP..tip, ring, middle, index, thumb.
PERM = np.array([0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4])
SK_COLOR_INTRINSICS = (607.92271, 607.88192, 314.78337, 236.42484)
BB_INTRINSICS = (822.79041, 822.79041, 318.47345, 250.31296)
BB_BASELINE_MM = 120.054
# The intrinsics come from calibration toolboxes that put pixel centres on integer coordinates
# (the README's `rodrigues`, om and T are Bouguet's MATLAB Camera Calibration Toolbox, whose
# convention is "[0;0] is the centre of the upper-left pixel"); crops use pixel corners, so the
# principal point moves by +0.5 px.
PIXEL_CENTRE_SHIFT = 0.5
# SK colour -> depth extrinsics from the STB README: depth = R colour + T, so colour = R^T (depth - T).
SK_ROTATION = Rotation.from_rotvec([0.00531, -0.01196, 0.00301]).as_matrix()
SK_TRANSLATION_MM = np.array([-24.0381, -0.4563, -1.2326])
# view -> (image prefix, label suffix, intrinsics fx, fy, cx, cy)
VIEWS = {
    "sk": ("SK_color", "SK", SK_COLOR_INTRINSICS),
    "bb_left": ("BB_left", "BB", BB_INTRINSICS),
    "bb_right": ("BB_right", "BB", BB_INTRINSICS),
}
KINDS = ("Counting", "Random")
DEFAULT_SEQUENCES = {"train": ["B2", "B3", "B4", "B5", "B6"], "test": ["B1"]}   # the literature split
WRIST_REFS = {"ring_mcp": 13, "middle_mcp": 9}   # hand21 index of the joint the wrist is extrapolated from


def sk_depth_to_color(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) points in the SK depth frame -> SK colour frame (row vectors: (x - T) R)."""
    return (xyz - SK_TRANSLATION_MM) @ SK_ROTATION


def camera_joints(hand_para: np.ndarray, view: str) -> np.ndarray:
    """handPara (3, 21, N) as stored -> (N, 21, 3) hand21-order joints in `view`'s camera, mm."""
    xyz = np.transpose(hand_para, (2, 1, 0)).astype(np.float64)
    if view == "sk":
        xyz = sk_depth_to_color(xyz)
    elif view == "bb_right":
        xyz = xyz - np.array([BB_BASELINE_MM, 0.0, 0.0])
    return xyz[:, PERM]


def load_hand_para(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise SampleError("label file missing", file=str(path)) from None
    except Exception as e:
        raise SampleError(f"unreadable .mat: {e}", file=str(path)) from None
    if "handPara" not in mat:
        raise SampleError(f"no 'handPara' in .mat (keys {sorted(k for k in mat if not k.startswith('__'))})", file=str(path))
    para = mat["handPara"]
    if para.ndim != 3 or para.shape[:2] != (3, 21) or para.dtype.kind not in "fiu":
        raise SampleError(f"handPara has shape {para.shape} dtype {para.dtype}, expected numeric 3 x 21 x N", file=str(path))
    return para


def sample_key(split: str, item) -> str:
    seq, view, frame = item
    return f"stb_{split}_{seq}_{view}_{frame:04d}"


def make_samples(item, *, root: Path, split: str, image_dirs: dict, label_files: dict, joints: dict,
                 root_kind: str, wrist_ref: str, wrist_factor: float, crop_size: int, context: float):
    seq, view, frame = item
    key = sample_key(split, item)
    prefix, suffix, (fx, fy, cx, cy) = VIEWS[view]
    cx, cy = cx + PIXEL_CENTRE_SHIFT, cy + PIXEL_CENTRE_SHIFT
    label_file = label_files[(seq, suffix)]
    xyz = np.array(joints[(seq, view)][frame], np.float64)
    if not np.all(np.isfinite(xyz)):
        raise SampleError(f"handPara frame {frame} has NaN/inf", file=str(label_file), sample=key)
    if np.any(xyz[:, 2] <= 0):
        raise SampleError(f"handPara frame {frame} has a joint at or behind the camera (z <= 0)", file=str(label_file), sample=key)
    wrist = None
    if root_kind == "wrist":
        ref = WRIST_REFS[wrist_ref]
        xyz[0] = xyz[ref] + wrist_factor * (xyz[0] - xyz[ref])
        wrist = {"from": wrist_ref, "factor": wrist_factor}
    uv = project(xyz, (fx, fy, cx, cy))
    image_path = image_dirs[seq] / f"{prefix}_{frame}.png"
    image = load_rgb(image_path, key)
    crop = crop_around(uv, crop_size, context, mirror=True)
    yield Sample(
        key=key,
        image=crop.image(image),
        joints3d_mm=crop.points3d(xyz),
        joints2d_px=crop.points(uv),
        visible=np.ones(21, bool),     # STB labels every joint in every frame
        intrinsics=crop.intrinsics(fx, fy, cx, cy),
        meta={"dataset": "stb", "split": split, "source": str(image_path.relative_to(root)),
              "sequence": seq, "frame": int(frame), "camera": view, "side": "left",
              "joint_order": "hand21", "root_index": 0, "root_kind": root_kind, "wrist_extrapolation": wrist,
              "principal_point_shift_px": PIXEL_CENTRE_SHIFT,
              **crop.meta()},
    )


def expand_sequences(spec) -> list[str]:
    """'B2,B3' (or ['B2', 'B3']) -> B2Counting, B2Random, B3Counting, B3Random; full names pass
    through. ValueError for anything else."""
    seqs = []
    for s in comma_list(spec) if isinstance(spec, str) else list(spec):
        if s.endswith(KINDS):
            seqs.append(s)
        elif len(s) == 2 and s[0] == "B" and s[1] in "123456":
            seqs += [s + kind for kind in KINDS]
        else:
            raise ValueError(f"{s!r} is neither B1..B6 nor a sequence like B1Counting")
    return seqs


def parse_frames(spec: str | None) -> tuple[int, int | None, int]:
    """'START:STOP[:STEP]' -> (start, stop, step); None -> every frame (stop None). ValueError
    for anything else."""
    if spec is None:
        return 0, None, 1
    try:
        parts = [int(p) for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or parts[0] < 0 or parts[1] <= parts[0] or (len(parts) == 3 and parts[2] < 1):
        raise ValueError(f"{spec!r} is not START:STOP[:STEP] with 0 <= START < STOP, STEP >= 1")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 1


def check_views(views) -> list[str]:
    view_list = list(views)
    bad = set(view_list) - set(VIEWS)
    if bad or not view_list:
        raise ValueError(f"unknown views {sorted(bad)}; choose from {sorted(VIEWS)}")
    return view_list


def image_dir(root: Path, seq: str) -> Path:
    """The released layout has images/<seq>/; some copies drop the images/ level."""
    for d in (root / "images" / seq, root / seq):
        if d.is_dir():
            return d
    raise ConversionError(f"image folder for {seq} missing: neither {root / 'images' / seq} nor {root / seq} exists")


def convert(src_root: Path, out_dir: Path, split: str, *, sequences=None, views=("sk",), frames: str | None = None,
            root_kind: str = "palm", wrist_ref: str = "ring_mcp", wrist_factor: float = 2.0,
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, **driver) -> dict:
    """One split of STB at `src_root` -> shards in `out_dir`; returns the manifest.

    `sequences`: names or B1..B6 (default: the literature split, train B2-B6, test B1); `views`:
    of VIEWS; `frames`: 'START:STOP[:STEP]' per sequence (default every frame). `driver`:
    convert_split's options (workers, limit, skip_bad, ...). Raises ValueError for a bad option,
    SampleError for an unreadable label file, ConversionError for a layout that does not fit."""
    if split not in DEFAULT_SEQUENCES:
        raise ValueError(f"unknown split {split!r}")
    view_list = check_views(views)
    start, stop, step = parse_frames(frames)
    seqs = expand_sequences(DEFAULT_SEQUENCES[split] if sequences is None else sequences)
    image_dirs, label_files, joints, items = {}, {}, {}, []
    for seq in seqs:
        image_dirs[seq] = image_dir(src_root, seq)
        for view in view_list:
            suffix = VIEWS[view][1]
            path = src_root / "labels" / f"{seq}_{suffix}.mat"
            para = load_hand_para(path)
            label_files[(seq, suffix)] = path
            joints[(seq, view)] = camera_joints(para, view)
            n_frames = para.shape[2]
            if stop is not None and stop > n_frames:
                raise ConversionError(f"--frames {frames} goes past the {n_frames} frames of handPara in {path}")
            items += [(seq, view, f) for f in range(start, n_frames if stop is None else stop, step)]
    make = functools.partial(make_samples, root=src_root, split=split, image_dirs=image_dirs,
                             label_files=label_files, joints=joints, root_kind=root_kind, wrist_ref=wrist_ref,
                             wrist_factor=wrist_factor, crop_size=crop_size, context=context)
    return convert_split(items, make, out_dir, desc=f"stb/{split}", item_key=functools.partial(sample_key, split),
                         manifest_extra={"dataset": "stb", "split": split, "joint_order": "hand21",
                                         "sequences": seqs, "views": view_list, "frames": frames,
                                         "root_kind": root_kind,
                                         "wrist_extrapolation": {"from": wrist_ref, "factor": wrist_factor}
                                         if root_kind == "wrist" else None,
                                         "left_hands": "mirrored to right", "crop_size": crop_size, "context": context},
                         **driver)


@click.command("stb")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True, help="comma list of train, test")
@click.option("--train-seqs", default="B2,B3,B4,B5,B6", show_default=True, help="train sequences (Bk = BkCounting + BkRandom)")
@click.option("--test-seqs", default="B1", show_default=True, help="test sequences")
@click.option("--frames", default=None, help="START:STOP[:STEP] frame range per sequence (default: every frame in handPara)")
@click.option("--views", default="sk", show_default=True, help="comma list of sk (SK colour), bb_left, bb_right (stereo pair)")
@click.option("--root", "root_kind", type=click.Choice(["palm", "wrist"]), default="palm", show_default=True,
              help="palm: keep STB's palm centre at index 0 (recorded as root_kind palm); wrist: extrapolate a wrist")
@click.option("--wrist-ref", type=click.Choice(sorted(WRIST_REFS)), default="ring_mcp", show_default=True,
              help="--root wrist: wrist = REF + FACTOR x (palm - REF) (hand3d: ring_mcp, 2.0; bihand: middle_mcp, 2.2)")
@click.option("--wrist-factor", type=float, default=2.0, show_default=True)
@conversion_options
def cli(src_root, out_dir, splits, train_seqs, test_seqs, frames, views, root_kind, wrist_ref, wrist_factor,
        crop_size, context, **kw):
    """STB -> OUT_DIR/{train,test}/ shards (literature split: train B2-B6, test B1).

    Joints in hand21 order (index 0 = palm centre unless --root wrist), millimetres, in the
    camera of each image; left hands mirrored to right; no masks."""
    # Every option is checked before the first split is written.
    with bad_parameter("--views"):
        view_list = check_views(comma_list(views))
    with bad_parameter("--frames"):
        parse_frames(frames)
    seqs_of = {}
    for split, spec, option in (("train", train_seqs, "--train-seqs"), ("test", test_seqs, "--test-seqs")):
        with bad_parameter(option):
            seqs_of[split] = expand_sequences(spec)
    for split in checked_splits(splits, seqs_of):
        m = convert(src_root, out_dir / split, split, sequences=seqs_of[split], views=view_list, frames=frames,
                    root_kind=root_kind, wrist_ref=wrist_ref, wrist_factor=wrist_factor, crop_size=crop_size,
                    context=context, **driver_kwargs(**kw))
        click.echo(f"stb/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

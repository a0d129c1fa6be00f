"""GANerated Hands in its released layout -> shards. Synthetic left hands, 256x256 crops.

<root>/data/{noObject,withObject}/<partition 0001..>/%04d_color_composed.png
    %04d_joint2D.txt          42 comma-separated floats: u, v in crop pixels, hand21
    %04d_joint_pos_global.txt 63 floats: camera-frame millimetres (original 640x480 camera), hand21
    %04d_crop_params.txt      u, v, scale: top-left corner of the crop box in the original image, scale
    %04d_joint_pos.txt        root-relative normalised joints (not used)

Released crop camera: `[[s fx, 0, s (cx - u)], [0, s fy, s (cy - v)], [0, 0, 1]]`. The joints
stored are that camera's projection of joint_pos_global (so they agree with the stored
intrinsics exactly); joint2D.txt must agree with it within `--max-2d-disagreement` px, which
catches a wrong camera or crop convention instead of storing it.

Partitions are not all complete: every `*_color_composed.png` is globbed and a frame missing any
of the txt files it needs is left out and listed in the manifest (`incomplete_frames`).
There is no official split: `--test-fraction` holds out whole partitions, chosen by a hash of
`<subset>/<partition>` and `--holdout-seed` (whole partitions because neighbouring frames come
from the same motion and would leak); the default keeps everything in train.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from shards.schema import Sample, SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, check_array, convert_split, crop_around, load_rgb
from .options import bad_parameter, comma_list, conversion_options, driver_kwargs

SUBSETS = ("noObject", "withObject")
# Original camera (640x480) of the released data; the crop camera is derived from it per frame.
FX = FY = 617.173
CX, CY = 315.453, 242.259
NEEDED = {"joint2D": 42, "joint_pos_global": 63, "crop_params": 3}   # txt file -> float count
IMAGE_SUFFIX = "_color_composed.png"


def read_floats(path: Path, count: int, sample: str) -> np.ndarray:
    """One txt file of comma-separated floats (a trailing newline or comma is tolerated)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SampleError(f"{path.name} missing", file=str(path), sample=sample) from None
    try:
        values = [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError as e:
        raise SampleError(f"malformed {path.name}: {e}", file=str(path), sample=sample) from None
    return check_array(values, (count,), path.name, path, sample)


def frame_key(frame: str) -> str:
    return frame.replace("/", "_")


def held_out(partition: str, test_fraction: float, seed: int) -> bool:
    """Deterministic, platform-independent choice of test partitions ('noObject/0001')."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{partition}".encode()).digest()[:8], "big")
    return h / 2.0 ** 64 < test_fraction


def make_samples(item, *, data_root: Path, split: str, side: str, crop_size: int, context: float,
                 max_2d_disagreement: float):
    frame = item   # 'noObject/0001/0001'
    key = f"ganerated_{split}_{frame_key(frame)}"
    base = data_root / frame
    txt = {name: read_floats(Path(f"{base}_{name}.txt"), n, key) for name, n in NEEDED.items()}
    xyz_mm = txt["joint_pos_global"].reshape(21, 3)
    u0, v0, s = txt["crop_params"]
    fx, fy, cx, cy = s * FX, s * FY, s * (CX - u0), s * (CY - v0)
    if s <= 0 or np.any(xyz_mm[:, 2] <= 0):
        raise SampleError(f"crop scale {s:g} or joint depths not positive", file=f"{base}_crop_params.txt", sample=key)
    uv = np.stack([fx * xyz_mm[:, 0] / xyz_mm[:, 2] + cx, fy * xyz_mm[:, 1] / xyz_mm[:, 2] + cy], axis=1)
    disagreement = float(np.abs(uv - txt["joint2D"].reshape(21, 2)).max())
    if disagreement > max_2d_disagreement:
        raise SampleError(f"joint2D.txt differs from the projection of joint_pos_global.txt by {disagreement:.3g} px "
                          f"(> {max_2d_disagreement:g})", file=f"{base}_joint2D.txt", sample=key)
    image_path = Path(f"{base}{IMAGE_SUFFIX}")
    image = load_rgb(image_path, key)
    crop = crop_around(uv, crop_size, context, mirror=side == "left")
    yield Sample(
        key=key,
        image=crop.image(image),
        joints3d_mm=crop.points3d(xyz_mm),
        joints2d_px=crop.points(uv),
        visible=np.ones(21, bool),
        intrinsics=crop.intrinsics(fx, fy, cx, cy),
        meta={"dataset": "ganerated", "split": split, "source": f"{frame}{IMAGE_SUFFIX}",
              "subset": frame.split("/")[0], "partition": frame.split("/")[1], "side": side,
              "joint_order": "hand21", "root_index": 0, "root_kind": "wrist",
              "crop_params": [float(u0), float(v0), float(s)], "joint2d_disagreement_px": round(disagreement, 4),
              **crop.meta()},
    )


@dataclass
class Frames:
    """What a scan of the release found: the data folder, the complete frames
    ('<subset>/<partition>/<id>') and the incomplete ones with the txt files they lack."""
    data_root: Path
    subsets: list[str]
    complete: list[str]
    incomplete: list[dict]


def list_frames(data_root: Path, subsets: list[str]) -> tuple[list[str], list[dict]]:
    """Complete frames ('<subset>/<partition>/<id>') and incomplete ones with what they lack."""
    complete, incomplete = [], []
    for subset in subsets:
        for png in sorted((data_root / subset).glob(f"*/*{IMAGE_SUFFIX}")):
            frame = f"{subset}/{png.parent.name}/{png.name[:-len(IMAGE_SUFFIX)]}"
            lacking = [f"{name}.txt" for name in NEEDED if not (data_root / f"{frame}_{name}.txt").exists()]
            if lacking:
                incomplete.append({"frame": frame, "missing": lacking})
            else:
                complete.append(frame)
    return complete, incomplete


def find_frames(src_root: Path, subsets=SUBSETS) -> Frames:
    """Scan GANeratedHands_Release (or its data/ folder) for the frames of `subsets`. ValueError
    for an unknown subset, ConversionError when a subset folder or every complete frame is
    missing."""
    wanted = list(subsets)
    bad = set(wanted) - set(SUBSETS)
    if bad:
        raise ValueError(f"unknown subsets {sorted(bad)}; choose from {SUBSETS}")
    data_root = src_root / "data" if (src_root / "data").is_dir() else src_root
    missing = [s for s in wanted if not (data_root / s).is_dir()]
    if missing:
        raise ConversionError(f"{[str(data_root / s) for s in missing]} not found (expected GANeratedHands_Release/data/<subset>)")
    complete, incomplete = list_frames(data_root, wanted)
    if not complete:
        raise ConversionError(f"no complete frames (*{IMAGE_SUFFIX} with their txt files) under {data_root}")
    return Frames(data_root, wanted, complete, incomplete)


def partition_of(frame: str) -> str:
    return frame.rsplit("/", 1)[0]


def convert(src_root: Path, out_dir: Path, split: str, *, subsets=SUBSETS, test_fraction: float = 0.0,
            holdout_seed: int = 0, hand_side: str = "left", max_2d_disagreement: float = 2.0,
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, frames: Frames | None = None,
            **driver) -> dict:
    """One split of GANerated Hands at `src_root` -> shards in `out_dir`; returns the manifest.

    There is no official split: "test" is the partitions `held_out` by `test_fraction` and
    `holdout_seed`, "train" the rest. `frames`: find_frames' scan, to scan the release once for
    both splits (default: scan `subsets` here). `driver`: convert_split's options."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction {test_fraction} is not in [0, 1]")
    frames = frames if frames is not None else find_frames(src_root, subsets)

    def in_split(frame: str) -> bool:
        return held_out(partition_of(frame), test_fraction, holdout_seed) == (split == "test")

    items = [f for f in frames.complete if in_split(f)]
    make = functools.partial(make_samples, data_root=frames.data_root, split=split, side=hand_side, crop_size=crop_size,
                             context=context, max_2d_disagreement=max_2d_disagreement)
    return convert_split(items, make, out_dir, desc=f"ganerated/{split}",
                         manifest_extra={"dataset": "ganerated", "split": split, "joint_order": "hand21",
                                         "subsets": frames.subsets, "test_fraction": test_fraction,
                                         "holdout_seed": holdout_seed, "holdout_unit": "partition",
                                         "partitions": sorted({partition_of(f) for f in items}),
                                         "hand_side": hand_side, "max_2d_disagreement": max_2d_disagreement,
                                         "incomplete_frames": [x for x in frames.incomplete if in_split(x["frame"])],
                                         "crop_size": crop_size, "context": context},
                         **driver)


@click.command("ganerated")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--subsets", default=",".join(SUBSETS), show_default=True, help="comma list of noObject, withObject")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="fraction of partitions held out as OUT_DIR/test (no official split; 0 = everything in train)")
@click.option("--holdout-seed", type=int, default=0, show_default=True, help="seed of the partition hash choosing the test partitions")
@click.option("--hand-side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="side of the rendered hands (left in the release); left hands are mirrored to right")
@click.option("--max-2d-disagreement", type=float, default=2.0, show_default=True,
              help="max px between joint2D.txt and the crop camera's projection of joint_pos_global.txt")
@conversion_options
def cli(src_root, out_dir, subsets, test_fraction, holdout_seed, hand_side, max_2d_disagreement,
        crop_size, context, **kw):
    """GANerated Hands (GANeratedHands_Release) -> OUT_DIR/train/ (and OUT_DIR/test/ with --test-fraction).

    hand21, camera-frame millimetres, crop intrinsics from crop_params, left hands mirrored."""
    with bad_parameter("--subsets"):
        frames = find_frames(src_root, comma_list(subsets))
    if frames.incomplete:
        click.echo(f"ganerated: {len(frames.incomplete)} frames lack txt files and are left out (listed in manifest.json)", err=True)
    for split in ("train", "test") if test_fraction > 0.0 else ("train",):
        m = convert(src_root, out_dir / split, split, test_fraction=test_fraction, holdout_seed=holdout_seed,
                    hand_side=hand_side, max_2d_disagreement=max_2d_disagreement, crop_size=crop_size,
                    context=context, frames=frames, **driver_kwargs(**kw))
        click.echo(f"ganerated/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped, "
                   f"{len(m['incomplete_frames'])} incomplete frames")

"""RHD (Rendered Hand Pose, v1.1 "RHD_published_v2") in its released layout -> shards.
Rendered images; a target domain.

<root>/training/{color,depth,mask}/%05d.png     41258 ids, 320x320
<root>/training/anno_training.pickle            {id: {'xyz': (42,3) m, 'uv_vis': (42,3), 'K': (3,3)}}
<root>/evaluation/{color,depth,mask}/%05d.png   2728 ids
<root>/evaluation/anno_evaluation.pickle

Raw joints 0-20 are the left hand, 21-41 the right, each finger stored tip->MCP. Mask PNGs hold
class ids: 0 background, 1 person, 2-17 left hand, 18-33 right hand. Depth maps are not used.
One RGB image shows two hands; the hand(s) kept per image follow `--hand-choice`, left hands are
mirrored to right.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np

from shards.schema import Sample, SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, check_array, convert_split, crop_around, load_image, load_pickle, load_rgb
from .options import checked_splits, conversion_options, driver_kwargs

SPLITS = {"train": "training", "test": "evaluation"}
# hand21[j] = rhd_hand[PERM[j]]: RHD stores every finger tip->MCP, hand21 MCP->tip.
PERM = np.array([0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17])
RAW_OFFSET = {"left": 0, "right": 21}
MASK_CLASSES = {"left": (2, 17), "right": (18, 33)}   # inclusive class-id ranges in mask PNGs
HAND_CHOICES = ("mask-pixels", "tllib")


def hand_pixels(labels: np.ndarray, side: str) -> np.ndarray:
    lo, hi = MASK_CLASSES[side]
    return (labels >= lo) & (labels <= hi)


# -- which hand(s) an image contributes ------------------------------------------------------
def square_box(box, width: int, height: int, scale: float) -> tuple:
    """The TLlib crop box: a square of side scale x the box's longer side (at most the image),
    integer pixel bounds (inclusive), pushed back inside the image."""
    left, upper, right, lower = box
    side = min(round(scale * max(right - left, lower - upper)), min(width, height))
    left = round((left + right) / 2 - side / 2)
    upper = round((upper + lower) / 2 - side / 2)
    left = min(max(left, 0), width - side)
    upper = min(max(upper, 0), height - side)
    return left, upper, left + side - 1, upper + side - 1


def box_area(left, upper, right, lower) -> float:
    return max(right - left + 1, 0) * max(lower - upper + 1, 0)


def tllib_sides(uv: np.ndarray, visible: np.ndarray, width: int, height: int, min_size: int = 64,
                min_visible: int = 16, max_overlap: float = 0.3) -> list[str]:
    """Every hand with more than `min_visible` visible joints whose 1.5x square box is larger
    than `min_size` px and overlaps the other hand's joint box by less than `max_overlap` of its
    area (Transfer-Learning-Library's RHD filter). uv, visible: the raw 42 joints."""
    boxes = {}
    for side, off in RAW_OFFSET.items():
        u, v = uv[off:off + 21, 0], uv[off:off + 21, 1]
        boxes[side] = (u.min(), v.min(), u.max(), v.max())
    keep = []
    for side, other in (("left", "right"), ("right", "left")):
        sq = square_box(boxes[side], width, height, 1.5)
        size = max(sq[2] - sq[0], sq[3] - sq[1])
        o = boxes[other]
        inter = (max(sq[0], o[0]), max(sq[1], o[1]), min(sq[2], o[2]), min(sq[3], o[3]))
        n_vis = int(visible[RAW_OFFSET[side]:RAW_OFFSET[side] + 21].sum())
        if size > min_size and n_vis > min_visible and box_area(*inter) / box_area(*sq) < max_overlap:
            keep.append(side)
    return keep


# -- one annotation id -> samples ------------------------------------------------------------
def check_entry(entry, anno_file: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one pickle entry -> (xyz (42,3) m, uv_vis (42,3), K (3,3)) as float64."""
    if not isinstance(entry, dict):
        raise SampleError(f"annotation entry is a {type(entry).__name__}, expected a dict", file=str(anno_file), sample=key)
    out = []
    for name, shape in (("xyz", (42, 3)), ("uv_vis", (42, 3)), ("K", (3, 3))):
        if name not in entry:
            raise SampleError(f"annotation lacks {name!r}", file=str(anno_file), sample=key)
        out.append(check_array(entry[name], shape, f"annotation {name!r}", anno_file, key))
    return tuple(out)


def load_labels(path: Path, key: str) -> np.ndarray:
    """Mask PNG -> HxW class ids (greyscale or palette PNG; the first channel of an RGB one)."""
    im = load_image(path, key)
    labels = np.asarray(im)
    return labels[..., 0] if labels.ndim == 3 else labels


def make_samples(item, *, root: Path, folder: str, split: str, anno: dict, hand_choice: str,
                 crop_size: int, context: float):
    sample_id = item
    anno_file = root / folder / f"anno_{folder}.pickle"
    image_key = f"rhd_{split}_{sample_id:05d}"
    xyz_m, uv_vis, k = check_entry(anno[sample_id], anno_file, image_key)
    color_path = root / folder / "color" / f"{sample_id:05d}.png"
    mask_path = root / folder / "mask" / f"{sample_id:05d}.png"
    image = load_rgb(color_path, image_key)
    labels = load_labels(mask_path, image_key)
    if labels.shape != image.shape[:2]:
        raise SampleError(f"mask is {labels.shape[::-1]} but the image {image.shape[1::-1]}", file=str(mask_path), sample=image_key)
    pixels = {side: int(hand_pixels(labels, side).sum()) for side in MASK_CLASSES}
    visible_raw = uv_vis[:, 2] > 0.5
    if hand_choice == "mask-pixels":
        # hand3d/bihand: the more prominent hand; a tie goes to the right hand as in hand3d.
        sides = ["left"] if pixels["left"] > pixels["right"] else ["right"]
    else:
        sides = tllib_sides(uv_vis[:, :2], visible_raw, image.shape[1], image.shape[0])
    for side in sides:
        key = f"{image_key}_{side}"
        idx = RAW_OFFSET[side] + PERM
        joints_mm = xyz_m[idx] * 1000.0
        if np.any(joints_mm[:, 2] <= 0):
            raise SampleError(f"{side} hand has a joint at or behind the camera (z <= 0)", file=str(anno_file), sample=key)
        uv = (joints_mm @ k.T)[:, :2] / joints_mm[:, 2:3]
        crop = crop_around(uv, crop_size, context, mirror=side == "left")
        hand_mask = np.where(hand_pixels(labels, side), 255, 0).astype(np.uint8)
        yield Sample(
            key=key,
            image=crop.image(image),
            mask=crop.mask(hand_mask),
            joints3d_mm=crop.points3d(joints_mm),
            joints2d_px=crop.points(uv),
            visible=visible_raw[idx],
            intrinsics=crop.intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]),
            meta={"dataset": "rhd", "split": split, "source": str(color_path.relative_to(root)),
                  "sample_id": int(sample_id), "side": side, "hand_choice": hand_choice,
                  "mask_pixels": pixels, "joint_order": "hand21", "root_index": 0, "root_kind": "wrist",
                  # joints2d come from projecting xyz with K; how far the released uv lie from that
                  "uv_vis_error_px": round(float(np.abs(uv - uv_vis[idx, :2]).max()), 4),
                  **crop.meta()},
        )


def find_root(src_root: Path) -> Path:
    """Accept RHD_published_v2/ itself or the folder holding it."""
    inner = src_root / "RHD_published_v2"
    return inner if not (src_root / "training").is_dir() and inner.is_dir() else src_root


def load_annotations(path: Path) -> dict:
    anno = load_pickle(path)
    if not isinstance(anno, dict):
        raise SampleError(f"annotation pickle holds a {type(anno).__name__}, expected a dict id -> entry", file=str(path))
    for sample_id in anno:
        if not isinstance(sample_id, (int, np.integer)) or isinstance(sample_id, bool) or sample_id < 0:
            raise SampleError(f"annotation key {sample_id!r} is not a sample id", file=str(path))
    return anno


def convert(src_root: Path, out_dir: Path, split: str, *, hand_choice: str = "mask-pixels",
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, **driver) -> dict:
    """One split ("train" or "test") of RHD at `src_root` (RHD_published_v2 or the folder holding
    it) -> shards in `out_dir`; returns the manifest. `driver`: convert_split's options."""
    root = find_root(src_root)
    folder = SPLITS[split]
    anno = load_annotations(root / folder / f"anno_{folder}.pickle")
    make = functools.partial(make_samples, root=root, folder=folder, split=split, anno=anno,
                             hand_choice=hand_choice, crop_size=crop_size, context=context)
    return convert_split(sorted(int(i) for i in anno), make, out_dir, desc=f"rhd/{split}",
                         manifest_extra={"dataset": "rhd", "split": split, "joint_order": "hand21",
                                         "hand_choice": hand_choice, "left_hands": "mirrored to right",
                                         "mask": "kept hand's classes (left 2-17, right 18-33) -> 255",
                                         "crop_size": crop_size, "context": context}, **driver)


@click.command("rhd")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True,
              help="comma list of train (RHD training), test (RHD evaluation)")
@click.option("--hand-choice", type=click.Choice(HAND_CHOICES), default="mask-pixels", show_default=True,
              help="mask-pixels: per image the hand with more mask pixels (hand3d, bihand); tllib: every hand "
                   "with > 16 visible joints, a 1.5x box > 64 px and < 30% overlap (Transfer-Learning-Library)")
@conversion_options
def cli(src_root, out_dir, splits, hand_choice, crop_size, context, **kw):
    """RHD (RHD_published_v2) -> OUT_DIR/{train,test}/ shards.

    Joints in hand21, millimetres, camera frame, visibility from uv_vis; left hands mirrored to
    right; mask = the kept hand's classes, 0/255. Depth maps are ignored."""
    for split in checked_splits(splits, SPLITS):
        m = convert(src_root, out_dir / split, split, hand_choice=hand_choice, crop_size=crop_size, context=context,
                    **driver_kwargs(**kw))
        click.echo(f"rhd/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")

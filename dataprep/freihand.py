"""FreiHAND (v2) in its released layout -> shards. Right hands only; the source domain.

<root>/training/rgb/%08d.jpg          4 versions x 32560 annotations (gs, hom, sample, auto)
<root>/training/mask/%08d.jpg         one lossy-JPEG mask per annotation
<root>/evaluation/rgb/%08d.jpg        3960 images (evaluation/segmap/%08d.png when present)
<root>/{training,evaluation}_{K,xyz}.json   K: N x 3 x 3; xyz: N x 21 x 3 metres, camera frame

Pixel convention: K comes from calibrated real cameras and the official toolbox projects with
OpenCV's convention (its MANO renderer is OpenDR's ProjectPoints, an OpenCV projectPoints), in
which integer coordinates are pixel centres. Crops use pixel corners (pixel i covers [i, i+1)),
so the principal point moves by +0.5 px (docs/datasets.md, "Pixel centres").
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import numpy as np

from shards.schema import Sample, SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, convert_split, crop_around, load_rgb
from .options import checked_splits, comma_list, conversion_options, driver_kwargs

VERSIONS = ("gs", "hom", "sample", "auto")   # image id // num_annotations
PIXEL_CENTRE_SHIFT = 0.5     # K's pixel-centre convention -> the crops' pixel corners
SPLITS = {"train": "training", "test": "evaluation"}


def load_json_array(path: Path, shape_tail: tuple, name: str) -> np.ndarray:
    try:
        data = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    except FileNotFoundError:
        raise SampleError(f"{name} missing", file=str(path)) from None
    except (ValueError, TypeError) as e:
        raise SampleError(f"malformed {name}: {e}", file=str(path)) from None
    if data.ndim != 1 + len(shape_tail) or data.shape[1:] != shape_tail:
        raise SampleError(f"{name} has shape {data.shape}, expected (N, {', '.join(map(str, shape_tail))})", file=str(path))
    return data


def make_samples(item, *, root: Path, folder: str, split: str, xyz: np.ndarray, K: np.ndarray,
                 crop_size: int, context: float, mask_threshold: int):
    image_id = item
    n_anno = len(xyz)
    anno, version = image_id % n_anno, image_id // n_anno
    key = f"freihand_{split}_{image_id:08d}"
    rgb_path = root / folder / "rgb" / f"{image_id:08d}.jpg"
    joints_m, k = xyz[anno], K[anno]
    if not np.all(np.isfinite(joints_m)) or not np.all(np.isfinite(k)):
        raise SampleError(f"annotation {anno} has NaN/inf", file=str(root / f"{folder}_xyz.json"), sample=key)
    joints_mm = joints_m * 1000.0
    k = k.copy()
    k[:2, 2] += PIXEL_CENTRE_SHIFT
    uv = (joints_mm @ k.T)[:, :2] / joints_mm[:, 2:3]
    image = load_rgb(rgb_path, key)
    crop = crop_around(uv, crop_size, context)
    mask = None
    if split == "train":
        mask_path = root / folder / "mask" / f"{anno:08d}.jpg"
        if mask_path.exists():
            m = load_rgb(mask_path, key)[:, :, 0]   # lossy JPEG: threshold channel 0
            mask = crop.mask(np.where(m > mask_threshold, 255, 0).astype(np.uint8))
    else:
        seg_path = root / folder / "segmap" / f"{image_id:08d}.png"
        if seg_path.exists():
            seg = load_rgb(seg_path, key)
            mask = crop.mask(np.where(seg.max(axis=2) > 0, 255, 0).astype(np.uint8))
    yield Sample(
        key=key,
        image=crop.image(image),
        mask=mask,
        joints3d_mm=crop.points3d(joints_mm),
        joints2d_px=crop.points(uv),
        visible=np.ones(21, bool),
        intrinsics=crop.intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]),
        meta={"dataset": "freihand", "split": split, "source": str(rgb_path.relative_to(root)),
              "annotation_id": int(anno), "version": VERSIONS[version] if version < 4 else str(version),
              "side": "right", "joint_order": "hand21", "root_index": 0, "root_kind": "wrist",
              "principal_point_shift_px": PIXEL_CENTRE_SHIFT, **crop.meta()},
    )


def convert(src_root: Path, out_dir: Path, split: str, *, versions=VERSIONS, mask_threshold: int = 240,
            crop_size: int = DEFAULT_CROP_SIZE, context: float = DEFAULT_CONTEXT, **driver) -> dict:
    """One split ("train" or "test") of FreiHAND v2 at `src_root` -> shards in `out_dir`; returns
    the manifest. `driver`: convert_split's options (workers, limit, skip_bad, ...)."""
    folder = SPLITS[split]
    xyz = load_json_array(src_root / f"{folder}_xyz.json", (21, 3), f"{folder}_xyz.json")
    K = load_json_array(src_root / f"{folder}_K.json", (3, 3), f"{folder}_K.json")
    if len(xyz) != len(K):
        raise SampleError(f"{folder}_xyz.json has {len(xyz)} entries but {folder}_K.json {len(K)}", file=str(src_root))
    n = len(xyz)
    if split == "train":
        ids = [VERSIONS.index(v) * n + a for v in versions for a in range(n)]
    else:
        ids = list(range(n))
    make = functools.partial(make_samples, root=src_root, folder=folder, split=split, xyz=xyz, K=K,
                             crop_size=crop_size, context=context, mask_threshold=mask_threshold)
    return convert_split(ids, make, out_dir, desc=f"freihand/{split}",
                         manifest_extra={"dataset": "freihand", "split": split, "joint_order": "hand21",
                                         "versions": list(versions) if split == "train" else None,
                                         "crop_size": crop_size, "context": context}, **driver)


@click.command("freihand")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", default="train,test", show_default=True, help="comma list of train, test (test = the official evaluation set)")
@click.option("--versions", default="gs,hom,sample,auto", show_default=True, help="training image versions to include")
@click.option("--mask-threshold", type=int, default=240, show_default=True, help="training masks are lossy JPEGs: foreground = channel 0 > this")
@conversion_options
def cli(src_root, out_dir, splits, versions, mask_threshold, crop_size, context, **kw):
    """FreiHAND v2 (training + evaluation archives) -> OUT_DIR/{train,test}/ shards.

    Joints in hand21, millimetres, camera frame; crops centred on the hand; training masks
    thresholded to 0/255."""
    wanted_versions = comma_list(versions)
    bad = set(wanted_versions) - set(VERSIONS)
    if bad:
        raise click.BadParameter(f"unknown versions {sorted(bad)}; choose from {VERSIONS}", param_hint="--versions")
    for split in checked_splits(splits, SPLITS):
        m = convert(src_root, out_dir / split, split, versions=wanted_versions, mask_threshold=mask_threshold,
                    crop_size=crop_size, context=context, **driver_kwargs(**kw))
        click.echo(f"freihand/{split}: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")
